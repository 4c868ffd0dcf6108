"""point_readout = grid_sample (align_corners=True, zero padding) at one point per neuron,
weighted per neuron over channels: values and all three gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurotwin.models.readouts import point_sampling as ps


def reference(features, grid, weights):
    """features (F, C, h, w), grid (F, N, 2), weights (C, N) -> (F, N) via grid_sample."""
    sampled = F.grid_sample(features, grid[:, :, None], align_corners=True).squeeze(-1)
    return torch.einsum("fcn,cn->fn", sampled, weights)


def inputs(frames, channels, h, w, n, spread, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, channels, h, w, generator=g, dtype=torch.float64)
    # positions beyond [-1, 1] exercise the zero padding of corners outside the map
    grid = (torch.rand(frames, n, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread
    weights = torch.randn(channels, n, generator=g, dtype=torch.float64)
    return [t.to(device).requires_grad_(True) for t in (features, grid, weights)]


def channels_last(features):
    f, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(f, h * w, c)


@pytest.mark.parametrize("spread", [0.9, 1.4])
@pytest.mark.parametrize("block_frames", [1, 3, 100])
def test_point_readout_matches_grid_sample_values_and_gradients(monkeypatch, spread, block_frames):
    frames, channels, h, w, n = 7, 5, 6, 9, 13
    features, grid, weights = inputs(frames, channels, h, w, n, spread)
    # the backward's dense blocks hold `block_frames` frames (float64: 8 bytes)
    monkeypatch.setattr(ps, "BACKWARD_BLOCK_BYTES", block_frames * h * w * n * 8)
    out = ps.point_readout(channels_last(features), grid, weights, h, w)
    ref = reference(features, grid, weights)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(ref)
    got = torch.autograd.grad(out, (features, grid, weights), upstream)
    want = torch.autograd.grad(ref, (features, grid, weights), upstream)
    for name, a, b in zip(("features", "grid", "weights"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d {name}")


def test_point_readout_at_pixel_centres_and_corners_of_the_map():
    """Exact pixel positions (fractions 0) and the map's edges, where the right/bottom corner
    falls outside and must count as zero."""
    h, w = 4, 5
    features, _, weights = inputs(2, 3, h, w, 6, 1.0)
    grid = torch.tensor(
        [[[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [0.5, -0.5]]] * 2,
        dtype=torch.float64,
        requires_grad=True,
    )
    out = ps.point_readout(channels_last(features), grid, weights, h, w)
    ref = reference(features, grid, weights)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(out.sum(), (features, weights))
    g2 = torch.autograd.grad(ref.sum(), (features, weights))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_point_readout_gradcheck():
    features, grid, weights = inputs(2, 3, 4, 5, 4, 0.8)
    fcl = channels_last(features.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f, g, w: ps.point_readout(f, g, w, 4, 5), (fcl, grid, weights)
    )


def test_point_readout_rejects_a_wrong_feature_layout():
    features, grid, weights = inputs(2, 3, 4, 5, 4, 0.8)
    with pytest.raises(ValueError, match="frames, 4\\*5, channels"):
        ps.point_readout(features, grid, weights, 4, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_point_readout_on_cuda_matches_grid_sample(autocast):
    """The compiled gather kernel and the (bf16 under autocast) backward on the GPU."""
    frames, channels, h, w, n = 30, 112, 18, 32, 500
    features, grid, weights = (
        t.detach().float().cuda() for t in inputs(frames, channels, h, w, n, 1.2)
    )
    for t in (features, grid, weights):
        t.requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = ps.point_readout(channels_last(features), grid, weights, h, w)
    ref = reference(features.double(), grid.double(), weights.double())
    upstream = torch.randn_like(ref)
    got = torch.autograd.grad(out, (features, grid, weights), upstream.float())
    want = torch.autograd.grad(ref, (features, grid, weights), upstream)
    tol = 1e-2 if autocast else 1e-4
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(out, ref) < 1e-4
    for name, a, b in zip(("features", "grid", "weights"), got, want, strict=True):
        assert rel(a, b) < tol, name
