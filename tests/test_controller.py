"""worldmodels.control.Controller: parameter counts of the paper's variants, the action box
under extreme inputs, exact flat round trips, and what a given flat vector means."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from worldmodels.control import Controller, map_action


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({}, 3 * (32 + 256) + 3),  # the paper's C: 867
        ({"use_hidden_state": False}, 3 * 32 + 3),  # "Z only": 99
        ({"use_hidden_state": False, "hidden_layer": 40}, 40 * 33 + 3 * 41),  # "Z + hidden"
        ({"hidden_layer": 16}, 16 * (288 + 1) + 3 * 17),
        ({"latent_dim": 8, "hidden_dim": 4}, 3 * 12 + 3),
    ],
)
def test_parameter_counts(kwargs, expected):
    c = Controller(**kwargs)
    assert c.num_parameters == expected == sum(p.numel() for p in c.parameters())
    assert c.get_flat().shape == (expected,)


def test_paper_values():
    assert Controller(32, 256).num_parameters == 867
    assert Controller(32, 256, use_hidden_state=False).num_parameters == 99


def _in_box(a: torch.Tensor) -> bool:
    return bool(
        (a[..., 0].abs() <= 1).all()
        and ((a[..., 1] >= 0) & (a[..., 1] <= 1)).all()
        and ((a[..., 2] >= 0) & (a[..., 2] <= 1)).all()
    )


@pytest.mark.parametrize("hidden_layer", [0, 8])
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e6])
def test_actions_stay_in_the_box(hidden_layer, scale):
    g = torch.Generator().manual_seed(0)
    c = Controller(6, 5, hidden_layer=hidden_layer)
    c.set_flat(np.random.default_rng(0).standard_normal(c.num_parameters) * 10)
    z, h = torch.randn(64, 6, generator=g) * scale, torch.randn(64, 5, generator=g) * scale
    a = c(z, h)
    assert a.shape == (64, 3) and torch.isfinite(a).all() and _in_box(a)
    # Huge inputs saturate every output: steer at ±1, gas at 0 or 1, brake at 0 or 1.
    if scale == 1e6 and hidden_layer == 0:
        assert torch.isclose(a[:, 0].abs(), torch.ones(64)).all()


def test_map_action_is_the_original_mapping():
    x = torch.tensor([[0.3, -0.4, 0.8], [-2.0, 5.0, -0.1], [0.0, 0.0, 0.0]])
    t = np.tanh(x.numpy().astype(np.float64))
    expected = np.stack([t[:, 0], (t[:, 1] + 1) / 2, np.clip(t[:, 2], 0, 1)], axis=1)
    np.testing.assert_allclose(map_action(x).numpy(), expected, rtol=1e-6)
    assert torch.equal(map_action(torch.tensor([-1e9, -1e9, -1e9])), torch.tensor([-1.0, 0, 0]))
    assert torch.equal(map_action(torch.tensor([1e9, 1e9, 1e9])), torch.tensor([1.0, 1, 1]))


@pytest.mark.parametrize("kwargs", [{}, {"hidden_layer": 5, "use_hidden_state": False}])
def test_flat_round_trip_is_exact(kwargs):
    a = Controller(**kwargs)
    vec = a.get_flat()
    assert vec.dtype == np.float64 and vec.ndim == 1
    b = Controller.from_flat(vec, **kwargs)
    np.testing.assert_array_equal(b.get_flat(), vec)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # get_flat is a copy: editing it changes nothing.
    vec[:] = 0
    assert np.any(a.get_flat() != 0)
    # A float64 CMA-ES candidate is rounded to fp32 once, then round-trips exactly.
    cand = np.random.default_rng(1).standard_normal(a.num_parameters)
    a.set_flat(cand)
    np.testing.assert_array_equal(a.get_flat(), cand.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(
        Controller.from_flat(a.get_flat(), **kwargs).get_flat(), a.get_flat()
    )


def test_flat_layout_bias_only_and_single_weight():
    c = Controller(4, 2)  # I = 6: weight (3, 6) row-major, then bias (3,)
    bias = np.array([0.5, -0.3, 0.7])
    c.set_flat(np.concatenate([np.zeros(18), bias]))
    z, h = torch.randn(5, 4), torch.randn(5, 2)
    expected = torch.tensor([math.tanh(0.5), (math.tanh(-0.3) + 1) / 2, math.tanh(0.7)])
    torch.testing.assert_close(c(z, h), expected.expand(5, 3))
    c.set_flat(np.concatenate([np.zeros(18), [0.0, 0.0, -2.0]]))  # negative brake -> 0
    assert torch.equal(c(z, h)[:, 2], torch.zeros(5))
    # W[0, 4] = 1: steer = tanh(h_0) (the first hidden-state input comes after z).
    w = np.zeros((3, 6))
    w[0, 4] = 1.0
    c.set_flat(np.concatenate([w.ravel(), np.zeros(3)]))
    torch.testing.assert_close(c(z, h)[:, 0], torch.tanh(h[:, 0]))
    torch.testing.assert_close(c(z, h)[:, 1], torch.full((5,), 0.5))


def test_set_flat_rejects_bad_vectors():
    c = Controller()
    with pytest.raises(ValueError, match="length 867"):
        c.set_flat(np.zeros(866))
    with pytest.raises(ValueError, match="length 867"):
        c.set_flat(np.zeros((3, 289)))
    with pytest.raises(ValueError, match="NaN or inf"):
        c.set_flat(np.full(867, np.nan))
    with pytest.raises(ValueError, match="length 99"):
        Controller.from_flat(np.zeros(867), use_hidden_state=False)
    c.set_flat(torch.zeros(867))  # tensors and lists are accepted too
    c.set_flat([0.0] * 867)
    assert not c.get_flat().any()


def test_inputs_shapes_dtypes_and_z_only():
    c = Controller(4, 3)
    z, h = torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    a = c(z, h)  # unbatched, fp64 in -> fp32 (3,)
    assert a.shape == (3,) and a.dtype == torch.float32
    torch.testing.assert_close(a, c(z[None].float(), h[None].float())[0])
    with pytest.raises(ValueError, match="h must have shape"):
        c(z)
    with pytest.raises(ValueError, match="z must have shape"):
        c(torch.randn(2, 5), torch.randn(2, 3))
    z_only = Controller(4, 3, use_hidden_state=False)
    zb = torch.randn(2, 4)
    torch.testing.assert_close(z_only(zb), z_only(zb, torch.randn(2, 3)))


def test_save_load_from_hparams():
    c = Controller(8, 4, hidden_layer=3)
    buf = io.BytesIO()
    torch.save({"hparams": c.hparams, "state": c.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = Controller(**ckpt["hparams"])
    clone.load_state_dict(ckpt["state"])
    np.testing.assert_array_equal(clone.get_flat(), c.get_flat())
