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

from experiments.common import base_config, parse_scale


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
  else:
    c.dataset.name = "mnist"
    c.train.epochs = 20
    c.train.batch_size = 128
    c.train.checkpoint_every_steps = 1000
    c.eval.batch_size = 1000
  return c
