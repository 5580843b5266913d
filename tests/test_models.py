"""The paper's architectures: parameter counts, shapes, initialisation, flattening order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax.errors import ConfigError
from wsjax.models import ARCHS, get_arch
from wsjax.params import flatten_params, make_unflatten, param_layout


@pytest.mark.parametrize("name,count", [("ffnn", 2160), ("cnn", 1376)])
def test_parameter_counts_match_the_paper(name, count):
    spec = ARCHS[name]
    params = spec.make_module().init(jax.random.key(0), jnp.zeros((1, *spec.input_shape)))
    assert flatten_params(params["params"]).shape == (count,)
    assert spec.num_params == count


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_forward_shape_and_batch_independence(name):
    spec = ARCHS[name]
    model = spec.make_module()
    x = jax.random.uniform(jax.random.key(1), (5, *spec.input_shape))
    params = model.init(jax.random.key(0), x)
    out = model.apply(params, x)
    assert out.shape == (5, 10)
    np.testing.assert_allclose(model.apply(params, x[2:3]), out[2:3], rtol=1e-5, atol=1e-6)


def test_cnn_feature_map_sizes():
    """14 -> conv s2 -> 7 -> pool -> 3 -> conv s2 -> 2 -> pool -> 1: the dense layer sees 8."""
    params = ARCHS["cnn"].make_module().init(jax.random.key(0), jnp.zeros((1, 14, 14, 1)))
    layout = {name: shape for name, shape, _ in param_layout(params["params"])}
    assert layout == {"Conv_0/kernel": (3, 3, 1, 16), "Conv_1/kernel": (3, 3, 16, 8),
                      "Dense_0/kernel": (8, 10)}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_kaiming_normal_fan_in(name):
    """Kernel std is sqrt(2 / fan_in) (plain normal, not truncated: some |w| > 2 std occur)."""
    spec = ARCHS[name]
    stds, tails = [], []
    for s in range(40):
        p = spec.make_module().init(jax.random.key(s), jnp.zeros((1, *spec.input_shape)))
        k = np.asarray(p["params"][sorted(p["params"])[0]]["kernel"])
        fan_in = int(np.prod(k.shape[:-1]))
        stds.append(k.std() / np.sqrt(2.0 / fan_in))
        tails.append(np.mean(np.abs(k) > 2 * np.sqrt(2.0 / fan_in)))
    assert abs(np.mean(stds) - 1.0) < 0.05
    assert np.mean(tails) > 0.03  # a 2-sigma-truncated normal would give 0


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_flatten_round_trip_and_order(name):
    spec = ARCHS[name]
    params = spec.make_module().init(jax.random.key(3), jnp.zeros((1, *spec.input_shape)))["params"]
    flat = flatten_params(params)
    back = make_unflatten(params)(flat)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)
    # Documented order: leaves by sorted key, each raveled row-major.
    offset = 0
    for key in sorted(params):
        k = np.asarray(params[key]["kernel"])
        np.testing.assert_array_equal(flat[offset: offset + k.size], k.ravel())
        offset += k.size


def test_unflatten_rejects_wrong_length():
    params = ARCHS["cnn"].make_module().init(jax.random.key(0), jnp.zeros((1, 14, 14, 1)))
    with pytest.raises(ConfigError, match=r"shape \(2160,\).*needs \(1376,\)"):
        make_unflatten(params["params"])(jnp.zeros(2160))


def test_unknown_arch():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet'; choose one of cnn, ffnn"):
        get_arch("resnet")
