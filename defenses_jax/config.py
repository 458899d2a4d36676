"""The config layout every experiment shares, and one entry of its attack list.

Experiment files (experiments/) fill in their own values; in Colab, build a config the same way:

  from defenses_jax.config import attack, base_config
  config = base_config()
  config.experiment_name = "my_cnn"
  config.eval.attacks.pgd = attack("pgd", "PGD (40 x 0.01, eps 0.3)", eps=0.3, step_size=0.01,
                                   steps=40)

Command-line overrides address these keys (`--config.train.epochs=3`); the config is locked,
so a misspelt key is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment_name = ""
  c.seed = 0
  c.num_devices = -1  # -1: every device JAX sees.

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist_embedded"
  c.dataset.train_split = "train"
  c.dataset.test_split = "test"
  c.dataset.data_dir = ""  # tfds data_dir; "" for tfds' default.
  c.dataset.num_train_examples = -1  # -1: all.
  c.dataset.num_test_examples = -1

  c.model = ml_collections.ConfigDict()
  c.model.name = "tt_mnist_cnn"
  c.model.options = ml_collections.ConfigDict()  # The model's own keyword arguments.
  # "bfloat16": compute in bfloat16 with float32 parameters, optimiser state, BatchNorm
  # statistics and outputs (models/precision.py); for GPU/TPU speed. Not part of the model's
  # identity: a float32-trained checkpoint can be evaluated in bfloat16 and the reverse.
  c.model.compute_dtype = "float32"

  c.defense = ml_collections.ConfigDict()
  c.defense.name = "standard"
  c.defense.options = ml_collections.ConfigDict()  # The defense's own keyword arguments.

  # A proxy for black-box attacks: train on the predictions of this (already trained) experiment
  # of the same workdir instead of the true labels. "" for ordinary training.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 10
  c.train.batch_size = 128  # Global batch, split over devices and hosts.
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.momentum = 0.9  # sgd only.
  c.train.nesterov = False  # sgd only.
  c.train.schedule = "constant"
  c.train.lr_boundary_epochs = ()  # piecewise only.
  c.train.lr_decay = 0.1  # piecewise only.
  c.train.l2_weight = 0.0
  c.train.l2_scope = "conv"
  c.train.replays = 1  # Train on each batch this many times in a row (Free-Adv's m).
  c.train.checkpoint_every_steps = 500
  c.train.log_every_steps = 50
  # Divergence stops training with an error (and `diverged` in results/train.json): a loss
  # above divergence_factor x max(its initial value, 1) for 3 log intervals in a row (0:
  # no such check; a NaN or infinite loss always stops it), or, with fail_at_chance, a test
  # accuracy at the end no better than always predicting the most frequent class.
  c.train.divergence_factor = 100.0
  c.train.fail_at_chance = True
  c.train.progress = True
  c.train.tensorboard = True  # Scalars also as TensorBoard events in <experiment>/tensorboard/.
  # (first, last): a JAX profiler trace of steps first+1 .. last in <experiment>/profile/,
  # viewable in TensorBoard's profile tab; () for none. From the command line:
  # --config.train.profile_steps="(10, 20)".
  c.train.profile_steps = ()

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500
  c.eval.every_epochs = 1  # Clean test accuracy during training.
  c.eval.num_attack_examples = -1  # Attacks run on the first N test images (-1: all).
  # Early-stopping attacks (CW-L2, CW-L-inf, DeepFool, JSMA, APGD / APGD-T: a restart or
  # target that fools the example ends it; HopSkipJump: no start, budget spent or within eps)
  # run over the whole attacked set with slot refill: a finished example's place in the batch
  # goes to the next image (evaluation/slot_runner.py).
  # Same per-image results on a deterministic model; False: batch after batch.
  c.eval.slot_refill = True
  # key -> {attack, label, threat_model, params, source_experiment}; see defenses_jax/evaluation/threat_models.py.
  c.eval.attacks = ml_collections.ConfigDict()
  # Robust accuracy under one of eval.attacks after every epoch, in metrics.jsonl ("" for none).
  c.eval.monitor = ml_collections.ConfigDict()
  c.eval.monitor.attack = ""
  c.eval.monitor.num_examples = 256
  c.eval.sanity = ml_collections.ConfigDict()
  c.eval.sanity.enabled = True
  c.eval.sanity.num_examples = 100  # The checks rerun attacks on this many attacked images.
  c.eval.sanity.unbounded_steps = 100
  c.eval.sanity.more_steps_factor = 4  # Iterative attacks are rerun this many times longer.
  # Which attacks get the (costly) more-steps check: by default all but transfer.
  c.eval.sanity.more_steps_threat_models = ("white_box", "gray_box", "adaptive")
  # White-box adversarial examples go to results/adversarial/ (transfer evaluations reuse them).
  c.eval.save_adversarial_examples = True
  # A detector fitted on the training images after training ("" for none); its threshold is
  # fixed on the clean test images after the attacked subset at this false-positive rate.
  c.eval.detection = ml_collections.ConfigDict()
  c.eval.detection.detector = ""
  c.eval.detection.options = ml_collections.ConfigDict()
  c.eval.detection.false_positive_rate = 0.05
  c.eval.detection.num_threshold_examples = -1  # Held-out images used (-1: all of them).
  c.eval.eps_sweep = ml_collections.ConfigDict()
  c.eval.eps_sweep.attack = ""  # A key of eval.attacks; "" for no sweep.
  c.eval.eps_sweep.eps_values = ()
  c.eval.eps_sweep.num_examples = 100

  # The paper's numbers for the report: {source, clean_accuracy, robust_accuracy: {key: value}}.
  c.paper = ml_collections.ConfigDict()
  c.paper.source = ""
  c.paper.clean_accuracy = None
  c.paper.robust_accuracy = ml_collections.ConfigDict()
  return c


def attack(name: str, label: str, threat_model: str = "white_box", source_experiment: str = "",
           eot_samples: int = 1, fit_examples: int = 0, detector_aware: bool = False,
           detector_weight: float = 1.0, detector_fpr: float = 0.0, num_examples: int = 0,
           surface: str = "", **params) -> dict:
  """One entry of config.eval.attacks (eot_samples > 1: EOT against a randomised defense;
  fit_examples: the training images a universal attack is fitted on, 0 for its default;
  detector_aware: evade the evaluation's detector too, its score times detector_weight, at the
  threshold of false-positive rate detector_fpr on clean held-out images (0: the deployed one);
  num_examples: run on the first N attacked images only, 0 for all of them; surface: one of
  the defense's named white-box attack surfaces, e.g. paper 004's 'bpda_identity')."""
  # label_params: what the label describes, so that an override of params on the command line
  # is shown in the label instead of running under a label that no longer fits.
  entry = {"attack": name, "label": label, "threat_model": threat_model, "params": params,
           "label_params": dict(params), "source_experiment": source_experiment}
  if eot_samples != 1:  # Absent otherwise, so that existing evaluations stay current.
    entry["eot_samples"] = eot_samples
  if fit_examples:
    entry["fit_examples"] = fit_examples
  if detector_aware:
    entry.update(detector_aware=True, detector_weight=detector_weight)
  if detector_fpr:  # Kept without detector_aware too, so that the spec check refuses it.
    entry["detector_fpr"] = detector_fpr
  if num_examples:
    entry["num_examples"] = num_examples
  if surface:
    entry["surface"] = surface
  return entry
