import jax
import jax.numpy as jnp
import pytest

from defenses_jax.models import MODELS, create_model

INPUT_SHAPES = {"tt_mnist_cnn": (28, 28, 1), "lenet": (28, 28, 1)}
EMBEDDING_WIDTH = {"tt_mnist_cnn": 128, "tt_cifar_cnn": 4 * 4 * 128, "lenet": 84,
                   "resnet8": 64, "resnet20": 64, "resnet32": 64, "resnet56": 64, "resnet18": 512,
                   "small_vgg": 512, "collab_oracle": 512, "plain_cnn": 512,
                   "collab_substitute_mnist": 200, "collab_substitute_cifar10": 256}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_outputs", [10, 20])
def test_output_and_embedding_shapes(name, num_outputs):
  model = create_model(name, num_outputs)
  x = jnp.zeros((3, *INPUT_SHAPES.get(name, (32, 32, 3))))
  # eval_shape traces the model without compiling it: shapes only, in milliseconds.
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))
  logits, embedding = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, return_embedding=True), variables)
  assert logits.shape == (3, num_outputs)
  assert embedding.shape == (3, EMBEDDING_WIDTH[name])
  assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (3, num_outputs)


def test_resnet_depths_have_the_expected_number_of_blocks():
  for depth, blocks in [(8, 3), (20, 9), (32, 15), (56, 27)]:
    model = create_model(f"resnet{depth}", 10)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert sum(k.startswith("BasicBlock") for k in v["params"]) == blocks


def test_models_run_in_train_and_inference_mode():
  model = create_model("tt_mnist_cnn", 20)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  v = model.init(jax.random.key(0), x)
  out, mutated = model.apply(v, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(2)})
  assert out.shape == (4, 20) and "batch_stats" in mutated
  # Inference mode is deterministic (no dropout, running statistics).
  a, b = model.apply(v, x), model.apply(v, x)
  assert jnp.array_equal(a, b)


def test_leaky_relu_resnet_differs_from_relu():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  relu, leaky = create_model("resnet20", 10), create_model("resnet20", 10, activation="leaky_relu")
  v = relu.init(jax.random.key(0), x)
  assert not jnp.allclose(relu.apply(v, x), leaky.apply(v, x))


def test_unknown_model_or_option_is_rejected():
  with pytest.raises(ValueError, match="unknown model"):
    create_model("resnet19", 10)
  with pytest.raises(ValueError, match="does not take"):
    create_model("lenet", 10, widht=3)
  with pytest.raises(ValueError, match="unknown activation"):
    create_model("resnet20", 10, activation="gelu").init(jax.random.key(0),
                                                         jnp.zeros((1, 32, 32, 3)))


def test_small_vgg_width_scales_every_layer_and_refuses_nonsense():
  x = jnp.zeros((1, 28, 28, 1))
  widths = lambda model: [leaf.shape[-1] for leaf in jax.tree.leaves(jax.eval_shape(
      lambda: model.init(jax.random.key(0), x))["params"]) if leaf.ndim > 1]
  # Six 3x3 convolutions, then Dense 512 - Dense 512 - Dense k.
  assert widths(create_model("small_vgg", 10)) == [64, 128, 64, 64, 128, 128, 512, 512, 10]
  assert widths(create_model("small_vgg", 10, width=0.125)) == [8, 16, 8, 8, 16, 16, 64, 64, 10]
  with pytest.raises(ValueError, match="width must be > 0"):
    jax.eval_shape(lambda: create_model("small_vgg", 10, width=0.0).init(jax.random.key(0), x))
