"""Mutations in the fast kernels (models/conv.py's weight gradient, models/pooling.py's max
pool, models/batch_norm.py's gradient, models/dropout.py's masks): each is a bug that would
keep the speed and change a training step's numbers."""

from __future__ import annotations

from mutations import Mutation

_CONV, _POOL = "defenses_jax/models/conv.py", "defenses_jax/models/pooling.py"
_CONV_TESTS, _POOL_TESTS = ("tests/test_conv.py",), ("tests/test_pooling.py",)
_NORM, _DROP = "defenses_jax/models/batch_norm.py", "defenses_jax/models/dropout.py"
_NORM_TESTS, _DROP_TESTS = ("tests/test_batch_norm.py",), ("tests/test_dropout.py",)

PERFORMANCE_MUTATIONS = (
    Mutation("weight_gradient_drops_the_last_images", _CONV, "  if rest:", "  if False:",
             _CONV_TESTS, "the images after the last whole chunk add nothing"),
    Mutation("weight_gradient_keeps_the_last_chunk", _CONV, "(acc + one(*xg), None)",
             "(one(*xg), None)", _CONV_TESTS, "the scan overwrites instead of adding"),
    Mutation("weight_gradient_added_in_bfloat16", _CONV,
             "preferred_element_type=_accumulation_dtype(g.dtype))",
             "preferred_element_type=g.dtype)", _CONV_TESTS,
             "a bfloat16 model's chunks rounded to bfloat16 at every addition"),
    Mutation("weight_gradient_padding_cut_at_the_low_end", _CONV,
             "padding = [(low, high - (size + low + high - k) % s)",
             "padding = [(low - (size + low + high - k) % s, high)", _CONV_TESTS,
             "a strided convolution's gradient shifted by the rows no tap sees"),
    Mutation("weight_gradient_not_summed_over_devices", _CONV,
             "sum_like_autodiff(w, weight_gradient.astype(w.dtype), x)",
             "weight_gradient.astype(w.dtype)", _CONV_TESTS,
             "inside shard_map a replicated kernel gets a per-device gradient"),
    Mutation("pool_gradient_to_the_last_maximum", _POOL,
             "jnp.min(jnp.where(at_max, position, a * b)",
             "jnp.max(jnp.where(at_max, position, -1)", _POOL_TESTS,
             "ties broken the other way from select-and-scatter"),
    Mutation("pool_gradient_to_every_maximum", _POOL, "position == first", "position <= first",
             _POOL_TESTS, "a window with tied maxima passes its gradient on more than once"),
    Mutation("pool_default_stride_is_the_window", _POOL,
             "strides = tuple(strides) if strides else (1,) * len(window_shape)",
             "strides = tuple(strides or window_shape)", _POOL_TESTS,
             "max_pool(x, window) without strides pools differently from nn.max_pool"),
    Mutation("pool_windows_from_the_far_edge", _POOL, "x[:, :rows * a, :columns * b]",
             "x[:, -rows * a:, -columns * b:]", _POOL_TESTS,
             "an odd-sized image pooled from the wrong corner"),
    Mutation("batch_norm_gradient_forgets_the_mean", _NORM, "gain * (g - bias_gradient / m",
             "gain * (g", _NORM_TESTS, "dx without the batch mean's share of the gradient"),
    Mutation("batch_norm_statistics_cotangents_dropped", _NORM,
             "dx = dx + mean_bar / m + centred * (2 * live * var_bar / m)", "dx = dx", _NORM_TESTS,
             "a loss on the returned statistics sends nothing back to the input"),
    Mutation("batch_norm_gradient_through_a_clipped_variance", _NORM,
             "live = jnp.where(unclipped > 0, 1.0, jnp.where(unclipped == 0, 0.5, 0.0))",
             "live = jnp.where(unclipped > -1e30, 1.0, jnp.where(unclipped == 0, 0.5, 0.0))",
             _NORM_TESTS, "a variance clipped at 0 still passes a gradient, unlike flax's"),
    Mutation("batch_norm_scale_gradient_not_summed_over_devices", _NORM,
             "sum_like_autodiff(scale, scale_gradient.astype(scale.dtype), x)",
             "scale_gradient.astype(scale.dtype)", _NORM_TESTS,
             "inside shard_map the scale gets a per-device gradient"),
    Mutation("batch_norm_running_variance_momentum_swapped", _NORM,
             "self.momentum * ra_var.value + (1 - self.momentum) * var",
             "(1 - self.momentum) * ra_var.value + self.momentum * var", _NORM_TESTS,
             "the running variance follows the last batch instead of the average"),
    Mutation("batch_norm_statistics_in_bfloat16", _NORM,
             "x = x.astype(jnp.promote_types(x.dtype, jnp.float32))", "x = x", _NORM_TESTS,
             "a bfloat16 model's batch statistics rounded to 8 bits"),
    Mutation("batch_norm_fast_path_never_taken", _NORM, "and not self.is_initializing())",
             "and False)", _NORM_TESTS, "the speed-up silently gone"),
    Mutation("dropout_keeps_the_threshold_value", _DROP, "values >= threshold",
             "values > threshold", _DROP_TESTS, "the keep probability is off by 1/256"),
    Mutation("dropout_scales_by_the_nominal_rate", _DROP,
             "inputs / jnp.asarray(keep_probability, inputs.dtype)",
             "inputs / jnp.asarray(1 - self.rate, inputs.dtype)", _DROP_TESTS,
             "a 16-bit rate's kept values scaled by the wrong probability: biased mean"),
    Mutation("dropout_16_bits_for_every_rate", _DROP,
             "bits = 8 if float(rate * 256).is_integer() else 16", "bits = 16", _DROP_TESTS,
             "masks from a different stream than the one documented"),
)
