"""Paper 000 (Target Training) Tables 1, 2, 3, 4 and 7, then the adaptive attack on the
classifier as deployed. One command trains and evaluates every model the tables need and writes
them with the paper's numbers beside ours:

cpu  (2 CPU cores, offline, embedded MNIST subset; attacks on 64 test images):
  python launch.py --config=experiments/paper_000_target_training/config.py:cpu --workdir=runs
mnist60k (2 CPU cores, the full MNIST from the package index; attacks on 100 test images):
  python launch.py --config=experiments/paper_000_target_training/config.py:mnist60k --workdir=runs
full (GPU/TPU, tfds MNIST; CIFAR-10 with `:cifar10_full`):
  python launch.py --config=experiments/paper_000_target_training/config.py:full --workdir=runs
`--mode=eval` re-evaluates trained models, `--mode=report` only rewrites the tables. An
interrupted run resumes: training from its last checkpoint, evaluation from the last finished
model. Tables land in <workdir>/paper_000_target_training_<dataset>_<scale>/tables.md (and
.json).

Members (each a normal experiment under <workdir>/<name>/):
  standard_*  unsecured classifier (k outputs)
  tt_*        Target Training, Algorithm 1 (duplicates labelled y + k; no adversarial examples)
  tt_<a>_*    Target Training, Algorithm 3 with attack a (cw40, pgd, fgsm) labelled y + k
  at_<a>_*    Adversarial Training (Algorithm 2) with attack a, true labels

Threat models. The paper attacks the 2k-output network with the true label ("paper protocol",
our `gray_box`): an untargeted attack may then move an image from class y to class y + k, which
the deployed classifier still maps to y. Table 3 crafts examples on the unsecured classifier
(`transfer`), Table 4 on the paper's adaptive sum layer z_i + z_{i+k} (`adaptive`). Beyond the
paper, `deployed` attacks differentiate the classifier as it is deployed, log(p_i + p_{i+k})
(our `white_box`), which is what an attacker who knows the defense would do.

mnist60k budget, measured (results/paper_000_target_training_mnist_mnist60k: 68 min on 2 idle
cores, JAX 0.11.2). Epochs of 468 steps at batch 128, chosen to reach the paper's 98.0-99.1%
clean accuracy (reached: 98.1-99.0%): unsecured and Algorithm 1 3 (196 + 382 s), FGSM-trained 2
(287 + 331 s), PGD-trained 2 (581 + 586 s), CW-trained 1 (408 + 375 s): 49 min of training.
Evaluation: the cpu scale's attack budgets on 100 test images instead of 64, 16 min (the
unsecured model and Algorithm 1, which face the most attacks, 4 and 5 min).
"""

import ml_collections

from experiments import standard
from experiments.common import (MNIST60K, attack, parse_dataset_scale, scale_notes,
                                steps_per_epoch)
from experiments.paper_000_target_training.tables import (MIN_PERTURBATION, paper_000_findings,
                                                         paper_000_tables)

DATASETS = ("mnist", "cifar10")
# Which attacks of Algorithm 3 / Algorithm 2 each adversarially trained member uses.
TRAINING_ATTACKS = ("cw40", "pgd", "fgsm")
TRAINING_ATTACK_KEY = {"cw40": "cw_l2_k40", "pgd": "pgd", "fgsm": "fgsm"}
# Which evaluation attacks each training attack's members face (the paper's Table 2 pairs each
# model with its own attack; FGSM-trained models also face PGD, which exposes single-step
# adversarial training that only resists single steps).
EVAL_ATTACKS = {"cw40": ("cw_l2_k40",), "pgd": ("pgd",), "fgsm": ("fgsm", "pgd")}
# mnist60k: epochs of 468 steps per member prefix (the unsecured model: standard.py's 3); the
# module docstring gives the budget.
MNIST60K_EPOCHS = {"tt": 3, "tt_fgsm": 2, "at_fgsm": 2, "tt_pgd": 2, "at_pgd": 2, "tt_cw40": 1,
                   "at_cw40": 1}


def get_config(arg=None):
  dataset, scale = parse_dataset_scale(arg, DATASETS, default_dataset="mnist", mnist60k=True)
  c = ml_collections.ConfigDict()
  c.suite_name = f"paper_000_target_training_{dataset}_{scale}"
  c.description = (f"Paper 000 (Target Training), {dataset}, {scale} scale")
  members = {}
  paper_attacks = standard.paper_000_attacks(dataset, scale)
  unsecured = standard.get_config(f"{dataset}_{scale}")
  if scale == "cpu":  # The same attacked images as the other members.
    unsecured.eval.batch_size = unsecured.eval.num_attack_examples = 64
  members[unsecured.experiment_name] = unsecured
  source = unsecured.experiment_name

  def variants(keys, *threats):
    """The named paper attacks under each threat model, keyed '<attack>_<threat suffix>'."""
    out = {}
    for key in keys:
      for threat in threats:
        entry = dict(paper_attacks[key])
        suffix, entry["threat_model"] = THREATS[threat]
        entry["label"] = f"{entry['label']}, {threat}"
        if threat == "transfer":
          entry["source_experiment"] = source
        out[f"{key}_{suffix}"] = entry
    return out

  tt = _member(dataset, scale, "tt", "target_training", {})
  tt.eval.attacks = ml_collections.ConfigDict({
      **variants(MIN_PERTURBATION, "paper protocol", "transfer", "paper adaptive"),
      # Table 1's cells only: UAP is one fit per threat model, ZOO costs (2B + 1) forward
      # passes per iteration; the white-box attacks on the deployed classifier are stronger.
      **variants(("uap", "zoo"), "paper protocol"),
      **variants(tuple(k for k in paper_attacks if k != "zoo"), "deployed")})
  members[tt.experiment_name] = tt
  train_attacks = training_attacks(dataset, scale)
  for name in TRAINING_ATTACKS:
    keys = EVAL_ATTACKS[name]
    m = _member(dataset, scale, f"tt_{name}", "target_training", train_attacks[name])
    threats = ["paper protocol", "paper adaptive", "deployed"]
    if name != "fgsm":  # Table 3 has no FGSM row.
      threats.insert(1, "transfer")
    m.eval.attacks = ml_collections.ConfigDict({**variants(keys[:1], *threats),
                                                **variants(keys[1:] + ("autoattack",),
                                                           "deployed")})
    if name == "pgd":  # A targeted variant: least-likely class, same budget.
      ll = paper_attacks["pgd"]
      m.eval.attacks.ll_pgd_deployed = attack(
          "pgd", f"LL-{ll['label']}, targeted at the least likely class, deployed",
          **ll["params"], target="least_likely")
    members[m.experiment_name] = m
    a = _member(dataset, scale, f"at_{name}", "adversarial_training", train_attacks[name])
    at_keys = keys + (MIN_PERTURBATION + ("uap",) if name == "pgd" else ())  # Table 1's AT column.
    at_keys += ("autoattack",)
    a.eval.attacks = ml_collections.ConfigDict(variants(at_keys, "white box"))
    members[a.experiment_name] = a
  c.members = ml_collections.ConfigDict(members)
  c.order = tuple(members)  # ConfigDict sorts its keys; training and evaluation follow this.
  tables = paper_000_tables(dataset, scale, standard.uap_description(dataset, scale),
                            standard.zoo_entry(scale)["label"])
  if scale == MNIST60K:
    tables = scale_notes(tables, mnist60k_notes(members))
  c.tables = ml_collections.ConfigDict(tables)
  c.findings = paper_000_findings(dataset, scale)
  return c


# threat name in labels -> (result key suffix, threat_model)
THREATS = {"paper protocol": ("paper", "gray_box"), "transfer": ("transfer", "transfer"),
           "paper adaptive": ("sum", "adaptive"), "deployed": ("deployed", "white_box"),
           "white box": ("wb", "white_box")}


def training_attacks(dataset: str, scale: str) -> dict:
  """defense options for Algorithms 2 and 3. The paper gives no settings for the attacks run
  during training; we use its evaluation attacks, shortened where training could not afford them
  (every training step runs the attack on the whole batch)."""
  if dataset == "mnist":
    # cpu, mnist60k: 7 steps of 0.05 (the paper's CIFAR-10 step count) instead of 40 of 0.01.
    pgd_steps, pgd_step = (40, 0.01) if scale == "full" else (7, 0.05)
    pgd = dict(eps=0.3, step_size=pgd_step, steps=pgd_steps, random_start=False)
  else:
    pgd = dict(eps=8 / 255, step_size=2 / 255, steps=7, random_start=False)
  # CW-L2 kappa 40 with one fixed constant: a binary search of 1,000-iteration optimisations per
  # training step would cost thousands of forward-backward passes per batch.
  cw_iterations = 100 if scale == "full" else 10
  cw = dict(kappa=40.0, binary_search_steps=1, max_iterations=cw_iterations, learning_rate=0.1,
            initial_const=1.0)
  return {"cw40": {"attack": "cw_l2", "attack_params": cw},
          "pgd": {"attack": "pgd", "attack_params": pgd},
          "fgsm": {"attack": "fgsm", "attack_params": dict(eps=0.3)}}


def _member(dataset: str, scale: str, prefix: str, defense: str, options: dict):
  c = standard.unsecured_config(dataset, scale)
  c.experiment_name = f"{prefix}_{dataset}_{scale}"
  c.defense.name = defense
  c.defense.options = ml_collections.ConfigDict(options)
  if scale == "cpu":
    # 2 CPU cores: attacks on 64 test images, and the more-steps check only on the attacks that
    # decide the verdict (white-box on the deployed classifier), not on the paper's weaker
    # attacker models, which are reported as the paper ran them.
    c.eval.batch_size = c.eval.num_attack_examples = 64
    c.eval.sanity.more_steps_threat_models = ("white_box",)
    if options:  # Adversarial examples cost an attack per training step: 4 epochs, not 10.
      c.train.epochs = 4
  elif scale == MNIST60K:  # As cpu, on 100 test images (standard.unsecured_config).
    c.eval.sanity.more_steps_threat_models = ("white_box",)
    c.train.epochs = MNIST60K_EPOCHS[prefix]
  return c


def mnist60k_notes(members: dict) -> dict:
  """What the mnist60k scale departs from the paper in, for each table's header."""
  epochs = lambda prefix: members[f"{prefix}_mnist_{MNIST60K}"].train.epochs
  images = members[f"tt_mnist_{MNIST60K}"].eval.num_attack_examples
  cw_l2, cw_linf = standard.cw_settings(MNIST60K)
  train_attacks = training_attacks("mnist", MNIST60K)
  pgd, cw = train_attacks["pgd"]["attack_params"], train_attacks["cw40"]["attack_params"]
  attacks = (f"Attacks on the first {images} test images (full scale: all 10,000); CW-L2 "
             f"{cw_l2['binary_search_steps']} x {cw_l2['max_iterations']} iterations (the "
             f"paper: 9 x 1,000), CW-Linf {cw_linf['max_iterations']} (1,000).")
  steps = steps_per_epoch(members[f"tt_mnist_{MNIST60K}"])
  training = (f"Epochs of {steps} steps: unsecured {epochs('standard')}, Algorithm 1 "
              f"{epochs('tt')}, FGSM-trained {epochs('tt_fgsm')}, PGD-trained "
              f"{epochs('tt_pgd')} (PGD of {pgd['steps']} steps of {pgd['step_size']:g}; the "
              f"paper evaluates 40 of 0.01), CW-trained {epochs('tt_cw40')} (CW-L2 kappa 40 at "
              f"one constant, {cw['max_iterations']} iterations); the paper gives no epochs "
              "(full scale: 20).")
  autoattack = "AutoAttack-style: 3 targets, 1,000 Square queries (AutoAttack: 9, 5,000)."
  notes = {"table_1": f"{attacks} {training}", "table_2": f"{attacks} {training}",
           "table_3": attacks, "table_4": attacks, "table_7": training,
           "beyond_threat_models": attacks,
           "beyond_autoattack": f"{attacks} {autoattack} {training}"}
  return {key: f"mnist60k scale: {text[0].lower()}{text[1:]}" for key, text in notes.items()}
