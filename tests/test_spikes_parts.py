"""The spike models' parts: bases, causal convolution (direct = FFT = the definition), the
registry's three models and their switches, the coupling's per-spike effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotwin.errors import ConfigError
from neurotwin.models.spikes import SPIKE_MODELS, SpikeModelOptions, TrialShape, build_spike_model
from neurotwin.models.spikes.bases import bspline_basis, raised_cosine_basis
from neurotwin.models.spikes.convolution import causal_conv

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = {
    "s0": {"populations": ["A", "B", "C"], "sizes": [2, 3, 1], "conditions": ["x", "y"]},
    "s.1": {"populations": ["B", "D"], "sizes": [2, 2], "conditions": ["x"]},
}


def test_bases():
    b = bspline_basis(137, 9)
    assert b.shape == (137, 9) and np.allclose(b.sum(1), 1) and (b >= 0).all()
    r = raised_cosine_basis(5, (1.0, 16.0), 2.0, 1.0)
    peaks = r.argmax(0) + 1  # lag (ms) of each bump's maximum
    assert peaks[0] == 1 and abs(peaks[-1] - 16) <= 1 and np.all(np.diff(peaks) > 0)
    assert np.all(np.diff(np.log(peaks + 2.0)) > 0) and r.max() <= 1
    assert r[-1].max() < 0.05  # the last lag is where the last bump has ended
    half = raised_cosine_basis(5, (1.0, 16.0), 2.0, 0.5)
    assert half.shape[0] == pytest.approx(2 * r.shape[0], abs=2)


@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
def test_causal_conv_is_the_definition(method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 90, generator=g, dtype=torch.float64)
    f = torch.randn(4, 17, generator=g, dtype=torch.float64)
    got = causal_conv(x, f, 20, method)
    want = torch.zeros(3, 4, 70, dtype=torch.float64)
    for t in range(20, 90):
        for tau in range(1, 18):
            want[:, :, t - 20] += f[:, tau - 1] * x[:, :, t - tau]
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="history bins"):
        causal_conv(x, f, 10, method)


def test_registry_and_switches():
    assert SPIKE_MODELS.names() == ["glm", "glm_vae", "vae"]
    shape = TrialShape(n_bins=60, n_history=70, bin_ms=1.0)
    glm = build_spike_model(SpikeModelOptions(name="glm"), SPECS, shape)
    both = build_spike_model(SpikeModelOptions(name="glm_vae"), SPECS, shape)
    vae = build_spike_model(SpikeModelOptions(name="vae"), SPECS, shape)
    assert glm.latent is None and glm.coupling is not None and glm.history is not None
    assert both.latent is not None and both.coupling is not None
    assert vae.latent is not None and vae.coupling is None and vae.history is None
    counts = torch.poisson(torch.full((5, 4, 130), 0.05))
    out = both("s.1", counts, torch.zeros(5, dtype=torch.long))
    assert out.log_rate.shape == (5, 4, 60) and out.mu.shape == (5, 2 * 2)  # 2 pops x 2 dims
    assert (out.kl() >= 0).all()
    with pytest.raises(ConfigError, match="unknown spike model"):
        build_spike_model(SpikeModelOptions(name="gpfa"), SPECS, shape)
    with pytest.raises(ConfigError, match="history_ms"):
        build_spike_model(SpikeModelOptions(), SPECS, TrialShape(60, 30, 1.0))


def test_coupling_effect_per_source_spike():
    """One spike of source unit i changes target unit n's log rate at lag tau by
    sum_s receive[n, s] send[i, s] f_s(tau); the reported filters average that."""
    shape = TrialShape(n_bins=80, n_history=70, bin_ms=1.0)
    options = SpikeModelOptions(name="glm")
    options.glm.coupling_rank = 2
    options.glm.history = False
    model = build_spike_model(options, {"s0": SPECS["s0"]}, shape)
    with torch.no_grad():
        for p in model.coupling.parameters():
            p.normal_()
    key = "s0"
    pairs = model.coupling.pairs[key]
    k = pairs.index((0, 1))  # A -> B
    source_unit, lag = 1, 5  # the second unit of A
    counts = torch.zeros(1, 6, 150)
    counts[0, source_unit, 70 + 10] = 1  # a spike in window bin 10
    effect = model.coupling(key, counts)[0, :, 10 + lag]  # log-rate change `lag` bins later
    send, receive = model.coupling.weights(key)
    f = model.coupling.filters(key)[k, :, lag - 1]  # (rank,)
    expected = (receive[2:5, k] * send[source_unit, k] * f).sum(-1)  # B's units
    torch.testing.assert_close(effect[2:5], expected.detach())
    mean, _ = model.coupling.mean_filters(key)
    direct = (receive[2:5, k][:, None, :] * send[0:2, k][None, :, :] * f).sum(-1).mean()
    torch.testing.assert_close(mean[k, lag - 1], direct.detach())
