"""Standard (unsecured) training of the Target Training CNN (paper 000, Table 5, k outputs).

cpu  (2 CPU cores, a few minutes; offline): the 4,000/1,000 embedded MNIST subset.
  python launch.py --config=experiments/standard.py:cpu --workdir=runs
full (GPU/TPU; the whole of MNIST from tensorflow-datasets):
  python launch.py --config=experiments/standard.py:full --workdir=runs
  CIFAR-10 with the Table 5 CIFAR CNN:
  python launch.py --config=experiments/standard.py:full --workdir=runs \
      --config.dataset.name=cifar10 --config.model.name=tt_cifar_cnn \
      --config.experiment_name=standard_cifar10_full
"""

import ml_collections

from experiments.common import attack, base_config, parse_scale


def get_config(arg=None):
  scale = parse_scale(arg)
  c = base_config()
  c.experiment_name = f"standard_mnist_{scale}"
  c.model.name = "tt_mnist_cnn"
  c.defense.name = "standard"
  # Table 5: L2 kernel regularizer on the convolutions (Keras-style 1e-4 per weight).
  c.train.l2_weight = 1e-4
  c.train.l2_scope = "conv"
  # The paper names no optimizer; Adam with a cosine decay ends training without the last-epoch
  # fluctuations of a constant rate.
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.schedule = "cosine"
  if scale == "cpu":
    c.dataset.name = "mnist_embedded"
    c.train.epochs = 10
    c.train.batch_size = 64
    c.train.checkpoint_every_steps = 200
    # CPU budget: attacks on 128 test images; Carlini-Wagner with 10x fewer iterations and, to
    # converge in them (the sanity check tests that), a 10x larger Adam step.
    c.eval.batch_size = 128
    c.eval.num_attack_examples = 128
    c.eval.sanity.num_examples = 32
    c.eval.sanity.more_steps_factor = 2
    c.eval.eps_sweep.num_examples = 64
    cw_l2 = dict(binary_search_steps=5, max_iterations=100, learning_rate=0.1,
                 initial_const=0.01)
    cw_linf = dict(max_iterations=100, max_total_iterations=500, learning_rate=0.05)
  else:
    c.dataset.name = "mnist"
    c.train.epochs = 20
    c.train.batch_size = 128
    c.train.checkpoint_every_steps = 1000
    c.eval.batch_size = 1000
    cw_l2 = dict(binary_search_steps=9, max_iterations=1000)
    cw_linf = dict(max_iterations=1000, max_total_iterations=20000)
  c.eval.attacks = ml_collections.ConfigDict(paper_000_attacks(cw_l2, cw_linf))
  c.eval.eps_sweep.attack = "pgd"
  c.eval.eps_sweep.eps_values = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
  # Paper 000 (Target Training), Tables 1 and 2, MNIST, unsecured ("default") classifier.
  c.paper.source = "paper 000 (Target Training), Tables 1-2, MNIST, unsecured classifier"
  c.paper.clean_accuracy = 0.991
  c.paper.robust_accuracy = ml_collections.ConfigDict({
      "cw_l2_k0": 0.008, "deepfool": 0.013, "zoo": 0.960, "uap": 0.421, "cw_linf_k0": 0.821,
      "cw_l2_k40": 0.007, "pgd": 0.797, "fgsm": 0.100})
  return c


def paper_000_attacks(cw_l2: dict, cw_linf: dict) -> dict:
  """The attacks of paper 000 section 4 on MNIST (PGD: 40 steps of 0.01 within 0.3, no random
  start; CW kappa 0 and 40; FGSM eps 0.3), white-box on the deployed classifier."""
  return {
      "cw_l2_k0": attack("cw_l2", f"CW-L2 (kappa=0, {_cw(cw_l2)})", kappa=0.0, **cw_l2),
      "deepfool": attack("deepfool", "DeepFool (L2)", overshoot=0.02, max_iter=50),
      "cw_linf_k0": attack("cw_linf", f"CW-Linf (kappa=0, {cw_linf['max_iterations']} iter., "
                           f"{cw_linf['max_total_iterations']} in all)",
                           kappa=0.0, **cw_linf),
      "cw_l2_k40": attack("cw_l2", f"CW-L2 (kappa=40, {_cw(cw_l2)})", kappa=40.0, **cw_l2),
      "pgd": attack("pgd", "PGD (40 x 0.01, eps=0.3)", eps=0.3, step_size=0.01, steps=40,
                    random_start=False),
      "fgsm": attack("fgsm", "FGSM (eps=0.3)", eps=0.3),
  }


def _cw(cfg: dict) -> str:
  lr = f", lr {cfg['learning_rate']}" if "learning_rate" in cfg else ""
  return f"{cfg['binary_search_steps']}x{cfg['max_iterations']} iter.{lr}"
