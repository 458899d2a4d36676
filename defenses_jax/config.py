"""The config every experiment shares, declared once: each key's default, what it may be and what
it is for (SCHEMA), and the fields of one entry of its attack list (ATTACK_ENTRY).

Experiment files (experiments/) fill in their own values; in Colab, build a config the same way:

  from defenses_jax.config import attack, base_config
  config = base_config()
  config.experiment_name = "my_cnn"
  config.eval.attacks.pgd = attack("pgd", "PGD (40 x 0.01, eps 0.3)", eps=0.3, step_size=0.01,
                                   steps=40)

Command-line overrides address these keys (`--config.train.epochs=3`); the config is locked,
so a misspelt key is an error rather than a silently ignored setting.

Derived from the declaration (config_schema.py): base_config(), the checks of config_checks.py
(before any compute), the reading of attack entries (evaluation/threat_models.py), upgrade() of a
config saved by an earlier version, and the reference docs/config.md
(`python -m defenses_jax.config > docs/config.md`).
"""

from __future__ import annotations

import ml_collections

from defenses_jax import config_schema as schema
from defenses_jax.config_schema import FreeForm, Key, KeyOf, KeysOf, section
from defenses_jax.value_checks import NON_NEGATIVE, POSITIVE, Items, OneOf, Range

# What an attacker knows (papers 002 appendix D, 003 section 2.2; evaluation/threat_models.py).
THREAT_MODELS = ("white_box", "gray_box", "adaptive", "transfer")

POSITIVE_INT = Range(low=1, integer=True, text="a positive integer")
NON_NEGATIVE_INT = Range(low=0, integer=True, text="a non-negative integer")
ALL_OR_POSITIVE = Range(low=1, integer=True, also=(-1,), text="positive or -1 (all)")
OPTIONAL_FRACTION = Range(low=0, high=1, optional=True)

ATTACK_ENTRY = section(
    "One entry of `eval.attacks` (build it with `config.attack(...)`): the attack, how it is "
    "run and what it is shown as. Read by evaluation/threat_models.parse_attack_specs, which "
    "also checks what depends on the attack and the defense (a universal attack's "
    "fit_examples, EOT only against a randomised defense, ...). Fields at their default may be "
    "left out (attack() leaves them out, so that existing evaluations stay current).",
    attack=Key(None, None, "The attack's name in attacks/registry.py; None: the entry's key.",
               type=str),
    label=Key(None, None, "Its row label in tables, e.g. 'PGD (40 x 0.01, eps 0.3)'; None: "
              "the entry's key.", type=str),
    threat_model=Key("white_box", OneOf(THREAT_MODELS),
                     "white_box: the attacker differentiates the defense as deployed; "
                     "gray_box: the bare network; adaptive: the defense's own adaptive attack; "
                     "transfer: examples crafted white-box on source_experiment."),
    params=FreeForm("The attack's own parameters.",
                    checked_in="the ranges its registry entry declares (registry.py)"),
    label_params=FreeForm(
        "The params the label describes, so that a command-line override of params is shown in "
        "the label (and the row not compared with the paper's number) instead of running under "
        "a label that no longer fits; None: a hand-written entry, its label taken as it is.",
        optional=True),
    source_experiment=Key("", None, "transfer only: the substitute's experiment name in the same "
                          "workdir (the unsecured classifier, a distilled proxy)."),
    eot_samples=Key(1, POSITIVE_INT,
                    "Against a randomised defense: the attacker differentiates the mean over "
                    "this many draws (expectation over transformation) at every step; 1: one "
                    "fresh draw per step."),
    fit_examples=Key(0, NON_NEGATIVE_INT,
                     "Universal attacks only: the training images the perturbation is fitted on; "
                     "0: the default (1,000)."),
    detector_aware=Key(False, None,
                       "Evade the evaluation's detector too: the attacker differentiates the "
                       "classifier with the detector's score folded in at the evaluation's "
                       "threshold. A detector-aware transfer attack evades the attacker's own "
                       "copy of the detector (same settings) fitted on the source model."),
    detector_weight=Key(1.0, POSITIVE, "Detector-aware: the detector's score is scaled by this "
                        "into logit units."),
    detector_fpr=Key(0.0, Range(low=0, high=1, high_open=True),
                     "Detector-aware only: the threshold the attacker evades, as a false-positive "
                     "rate on the clean held-out images (0: the deployed threshold). 0.5 evades "
                     "the clean median score, paper 002's 'until the detection AUC is at most "
                     "0.5'; scoring always uses the deployed threshold."),
    num_examples=Key(0, NON_NEGATIVE_INT,
                     "Run on the first N attacked images only (0: all of them), for attacks too "
                     "costly for the whole attacked subset (paper 000's ZOO: 200 images)."),
    surface=Key("", None, "One of the defense's named white-box attack surfaces (its "
                "attack_surfaces, e.g. paper 004's 'bpda_identity'); '': the deployed classifier "
                "itself."),
)

SCHEMA = section(
    "Keys outside any section.",
    experiment_name=Key("", None, "The experiment's directory under the workdir (a plain "
                        "name): `<workdir>/<experiment_name>/`."),
    seed=Key(0, NON_NEGATIVE_INT, "Initialisation, data order and training randomness."),
    num_devices=Key(-1, Range(low=1, integer=True, also=(-1,), text="positive or -1 (all)"),
                    "Devices to train and evaluate on; -1: every device JAX sees."),
    dataset=section(
        "The data: a named dataset (data.load_dataset) and how much of it is used.",
        name=Key("mnist_embedded", None, "The dataset's name (data.load_dataset)."),
        train_split=Key("train", None, "The training split."),
        test_split=Key("test", None, "The test split."),
        data_dir=Key("", None, "tfds' data_dir; '' for tfds' default."),
        num_train_examples=Key(-1, ALL_OR_POSITIVE, "Train on the first N images (-1: all)."),
        num_test_examples=Key(-1, ALL_OR_POSITIVE, "Test on the first N images (-1: all)."),
    ),
    model=section(
        "The network.",
        name=Key("tt_mnist_cnn", None, "The model's name (models/__init__.py)."),
        options=FreeForm("The model's own keyword arguments.",
                         checked_in="create_model, when the experiment is built"),
        compute_dtype=Key("float32", OneOf(("bfloat16", "float32")),
                          "bfloat16: compute in bfloat16 with float32 parameters, optimiser "
                          "state, BatchNorm statistics and outputs (models/precision.py), for "
                          "GPU/TPU speed. Not part of the model's identity: a float32-trained "
                          "checkpoint can be evaluated in bfloat16 and the reverse."),
    ),
    defense=section(
        "The defense (defenses/): how the network is trained and deployed.",
        name=Key("standard", None, "The defense's name (defenses/__init__.py)."),
        options=FreeForm("The defense's own keyword arguments.",
                         checked_in="create_defense, before training"),
    ),
    distill=section(
        "A proxy for black-box attacks.",
        teacher=Key("", None, "Train on the predictions of this (already trained) experiment of "
                    "the same workdir instead of the true labels; '' for ordinary training."),
    ),
    train=section(
        "Training.",
        epochs=Key(10, POSITIVE_INT, "Passes over the training set."),
        batch_size=Key(128, POSITIVE_INT, "The global batch, split over devices and hosts."),
        optimizer=Key("adam", OneOf(("adam", "sgd")), "The optimiser (optim.py)."),
        learning_rate=Key(1e-3, Range(low=0, low_open=True, text="positive"),
                          "The (initial) learning rate."),
        momentum=Key(0.9, NON_NEGATIVE, "sgd only; 0: plain SGD."),
        nesterov=Key(False, None, "sgd only."),
        schedule=Key("constant", OneOf(("constant", "cosine", "piecewise")),
                     "The learning-rate schedule."),
        lr_boundary_epochs=Key((), Items(NON_NEGATIVE, "numbers >= 0"),
                               "piecewise only: the epochs at which the rate is multiplied by "
                               "lr_decay."),
        lr_decay=Key(0.1, POSITIVE, "piecewise only."),
        l2_weight=Key(0.0, NON_NEGATIVE, "Weight of the L2 penalty on kernels."),
        l2_scope=Key("conv", OneOf(("conv", "all")),
                     "conv: 4-D kernels only (the Keras kernel_regularizer of paper 000 Table "
                     "5); all: every kernel, dense layers included."),
        replays=Key(1, POSITIVE_INT, "Train on each batch this many times in a row (Free-Adv's "
                    "m)."),
        checkpoint_every_steps=Key(500, POSITIVE_INT, "Steps between checkpoints."),
        log_every_steps=Key(50, POSITIVE_INT, "Steps between lines of metrics.jsonl."),
        divergence_factor=Key(100.0, Range(low=1, low_open=True, also=(0,),
                                           text="0 (no check) or above 1"),
                              "Divergence stops training with an error (and `diverged` in "
                              "results/train.json): a loss above divergence_factor x max(its "
                              "initial value, 1) for 3 log intervals in a row; 0: no such "
                              "check (a NaN or infinite loss always stops it)."),
        fail_at_chance=Key(True, None, "A test accuracy at the end no better than always "
                           "predicting the most frequent class stops the run with an error "
                           "too."),
        progress=Key(True, None, "A progress bar."),
        tensorboard=Key(True, None, "Scalars also as TensorBoard events in "
                        "`<experiment>/tensorboard/`."),
        profile_steps=Key((), Items(NON_NEGATIVE_INT, "(first, last) with 0 <= first < last, "
                                    "or ()", lengths=(0, 2), increasing=True),
                          "A JAX profiler trace of steps first+1 .. last in "
                          "`<experiment>/profile/`, viewable in TensorBoard's profile tab; () "
                          "for none. From the command line: "
                          "`--config.train.profile_steps=\"(10, 20)\"`."),
    ),
    eval=section(
        "Evaluation: clean accuracy during training, attacks after it.",
        batch_size=Key(500, POSITIVE_INT, "The global evaluation and attack batch."),
        every_epochs=Key(1, POSITIVE_INT, "Clean test accuracy every this many epochs."),
        num_attack_examples=Key(-1, ALL_OR_POSITIVE, "Attacks run on the first N test images "
                                "(-1: all)."),
        slot_refill=Key(True, None,
                        "Early-stopping attacks (CW-L2, CW-L-inf, DeepFool, JSMA, APGD / "
                        "APGD-T: a restart or target that fools the example ends it; "
                        "HopSkipJump: no start, budget spent or within eps) run over the whole "
                        "attacked set with slot refill: a finished example's place in the batch "
                        "goes to the next image (evaluation/slot_runner.py). Same per-image "
                        "results on a deterministic model; False: batch after batch."),
        attacks=FreeForm("The attacks by key, each an entry declared below.",
                         entry=ATTACK_ENTRY, checked_in="evaluation/threat_models.py, with the "
                         "attack and the defense"),
        worst_case_groups=FreeForm(
            "Named groups of attacks whose per-example worst case is reported (table cell "
            "`<member>:worst_case:<group>`), e.g. every BPDA variant.",
            entry=KeysOf("eval.attacks", "attacks")),
        monitor=section(
            "Robust accuracy under one of eval.attacks after every epoch, in metrics.jsonl.",
            attack=Key("", KeyOf("eval.attacks"), "The attack; '' for none."),
            num_examples=Key(256, POSITIVE_INT, "Test images it attacks."),
        ),
        sanity=section(
            "The Carlini et al. 2019 sanity checks, run with every evaluation.",
            enabled=Key(True, None, "Run them."),
            num_examples=Key(100, POSITIVE_INT, "The checks rerun attacks on this many attacked "
                             "images."),
            unbounded_steps=Key(100, POSITIVE_INT, "Steps of the unbounded attack (which must "
                                "reach 0% accuracy)."),
            more_steps_factor=Key(4, POSITIVE_INT, "Iterative attacks are rerun this many times "
                                  "longer."),
            more_steps_threat_models=Key(("white_box", "gray_box", "adaptive"),
                                         Items(OneOf(THREAT_MODELS), f"threat models of "
                                               f"{list(THREAT_MODELS)}"),
                                         "Which attacks get the (costly) more-steps check: by "
                                         "default all but transfer."),
        ),
        save_adversarial_examples=Key(True, None, "White-box adversarial examples go to "
                                      "results/adversarial/ (transfer evaluations reuse them)."),
        detection=section(
            "A detector fitted on the training images after training; its threshold is fixed on "
            "the clean test images after the attacked subset.",
            detector=Key("", None, "The detector's name (detectors/); '' for none. Checked, "
                         "with its options, by evaluation/preflight.py."),
            options=FreeForm("The detector's own keyword arguments.",
                             checked_in="evaluation/preflight.py"),
            false_positive_rate=Key(0.05, Range(low=0, high=1, low_open=True, high_open=True,
                                                text="in (0, 1)"),
                                    "The threshold's false-positive rate on clean held-out "
                                    "images.", checked_in="evaluation/preflight.py, with a "
                                    "detector that has no fixed threshold of its own"),
            num_threshold_examples=Key(-1, ALL_OR_POSITIVE, "Held-out images the threshold is "
                                       "fixed on (-1: all of them).",
                                       checked_in="evaluation/preflight.py, with a detector"),
        ),
        eps_sweep=section(
            "Robust accuracy of one attack over a range of budgets.",
            attack=Key("", KeyOf("eval.attacks"), "The attack swept; '' for no sweep."),
            eps_values=Key((), Items(NON_NEGATIVE, "numbers >= 0 (0: clean)"),
                           "The budgets."),
            num_examples=Key(100, POSITIVE_INT, "Test images attacked at each budget."),
        ),
    ),
    paper=section(
        "The paper's numbers for the report.",
        source=Key("", None, "Where they come from (paper, table)."),
        clean_accuracy=Key(None, OPTIONAL_FRACTION, "The paper's clean accuracy; None: not "
                           "given.", type=float),
        robust_accuracy=FreeForm("The paper's robust accuracy by key of eval.attacks.",
                                 entry=OPTIONAL_FRACTION),
    ),
)


def base_config() -> ml_collections.ConfigDict:
  """Every key of SCHEMA at its default."""
  return ml_collections.ConfigDict(schema.defaults(SCHEMA))


def upgrade(config):
  """A config saved by an earlier version (a ConfigDict, or the dict of a config.json) with the
  keys added since (model.compute_dtype, eval.slot_refill, eval.worst_case_groups,
  train.divergence_factor, ...) at their defaults, so that code reads every key plainly. A new
  config of the kind given."""
  return schema.filled(SCHEMA, config)


def reference() -> str:
  """docs/config.md: every key, its default, what it may be and what it is for."""
  return schema.reference(
      SCHEMA, "Config reference",
      "Generated from defenses_jax/config.py (`python -m defenses_jax.config > docs/config.md`; "
      "a test keeps it current). Checked before any compute by config_checks.check_config.",
      {"An entry of `eval.attacks`": ATTACK_ENTRY})


def attack(name: str, label: str, threat_model: str = "white_box", source_experiment: str = "",
           eot_samples: int = 1, fit_examples: int = 0, detector_aware: bool = False,
           detector_weight: float = 1.0, detector_fpr: float = 0.0, num_examples: int = 0,
           surface: str = "", **params) -> dict:
  """One entry of config.eval.attacks (its fields: ATTACK_ENTRY; `params`: the attack's own)."""
  entry = {"attack": name, "label": label, "threat_model": threat_model, "params": params,
           "label_params": dict(params), "source_experiment": source_experiment}
  # Fields at their default are left out, so that existing evaluations stay current (a suite
  # compares eval.json's eval config with the config's).
  optional = dict(eot_samples=eot_samples, fit_examples=fit_examples,
                  detector_aware=detector_aware, detector_fpr=detector_fpr,
                  num_examples=num_examples, surface=surface)
  entry.update({k: v for k, v in optional.items() if v != ATTACK_ENTRY.keys[k].default})
  if detector_aware:  # (detector_fpr is kept without it, so that the spec check refuses it.)
    entry["detector_weight"] = detector_weight
  return entry


if __name__ == "__main__":
  print(reference(), end="")
