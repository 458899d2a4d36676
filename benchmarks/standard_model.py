"""The models the CPU benchmarks attack, trained first if the workdir has no finished checkpoint:
- `standard`: the paper 000 MNIST CNN as experiments/standard.py:cpu trains it;
- `at_pgd`: the same network adversarially trained with PGD (paper 000's at_pgd_mnist_cpu:
  PGD-7, eps 0.3, 4 epochs). On a robust model, images differ in
  how long an early-stopping attack takes, which is what slot refill is for."""

MODELS = ("standard", "at_pgd")


def model_config(model: str):
  if model == "standard":
    from experiments import standard
    return standard.get_config("cpu")
  if model == "at_pgd":
    from experiments.paper_000_target_training import config as paper_000
    return paper_000.get_config("cpu").members["at_pgd_mnist_cpu"]
  raise ValueError(f"unknown benchmark model {model!r}; one of {MODELS}")


def load_model_and_batch(workdir, num_images, model: str = "standard"):
  """(logits_fn, variables, x, y): the model and its first `num_images` correctly classified
  test images."""
  config = model_config(model)
  import jax
  import jax.numpy as jnp
  from defenses_jax import train as train_lib
  from defenses_jax.defenses import Network
  from defenses_jax.experiment import Experiment, variables
  exp = Experiment(config, workdir)
  ckpt = exp.checkpoints()
  if ckpt.latest_step() is None or ckpt.latest_step() < exp.total_steps:
    ckpt.close()
    print(f"training {config.experiment_name} first ...", flush=True)
    train_lib.train_and_evaluate(config, workdir)
    ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  model_variables = variables(state.params, state.batch_stats)
  logits_fn = jax.jit(Network(exp.model, model_variables))
  x, y = jnp.asarray(exp.test_ds.images), jnp.asarray(exp.test_ds.labels)
  correct = jnp.argmax(logits_fn(x), -1) == y
  x, y = x[correct][:num_images], y[correct][:num_images]
  return logits_fn, model_variables, x, y
