"""Mutations in the fast kernels (models/conv.py's weight gradient, models/pooling.py's max
pool): each is a bug that would keep the speed and change a training step's numbers."""

from __future__ import annotations

from mutations import Mutation

_CONV, _POOL = "defenses_jax/models/conv.py", "defenses_jax/models/pooling.py"
_CONV_TESTS, _POOL_TESTS = ("tests/test_conv.py",), ("tests/test_pooling.py",)

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
             "_as_cotangent_of(w, weight_gradient.astype(w.dtype), x)",
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
)
