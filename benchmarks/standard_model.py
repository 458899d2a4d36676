"""The model every CPU benchmark attacks: the paper 000 MNIST CNN as experiments/standard.py:cpu
trains it (trained first if the workdir has no finished checkpoint)."""


def load_model_and_batch(workdir, num_images):
  import jax
  import jax.numpy as jnp
  from defenses_jax import train as train_lib
  from defenses_jax.defenses import Network
  from defenses_jax.experiment import Experiment, variables
  from experiments import standard
  config = standard.get_config("cpu")
  exp = Experiment(config, workdir)
  ckpt = exp.checkpoints()
  if ckpt.latest_step() is None or ckpt.latest_step() < exp.total_steps:
    ckpt.close()
    print("training the standard cpu model first ...", flush=True)
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
