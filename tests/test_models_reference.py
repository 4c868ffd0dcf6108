"""Our Gaussian readout and shifter against neuralpredictors (the Sinz lab's library) as an
independent reference. Skipped when neuralpredictors is not installed (it is in the [dev] extra:
neuralpredictors 0.3.0; its readouts and shifters import and run on Python 3.11 / torch 2.x)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from neurotwin.models.readouts.gaussian import GaussianOptions, GaussianReadout
from neurotwin.models.shifter import MLPShifter, ShifterOptions

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    readouts = pytest.importorskip("neuralpredictors.layers.readouts")
    shifters = pytest.importorskip("neuralpredictors.layers.shifters.mlp")


# small models on a shared CPU: one intra-op thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(gauss_type: str, c=4, h=6, w=9, n=11):
    torch.manual_seed(0)
    options = GaussianOptions(
        readout_grid_mode=0, readout_gauss_type=gauss_type, readout_bias_mode=1
    )
    ours = GaussianReadout((c, h, w), n, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not initialized with mean activity"
        ref = readouts.FullGaussian2d(
            in_shape=(c, h, w), outdims=n, bias=True, gauss_type=gauss_type, init_sigma=0.3
        )
    with torch.no_grad():
        ours._mu.copy_(torch.rand(n, 2) * 1.8 - 0.9)
        ours.sigma.copy_(torch.randn_like(ours.sigma) * 0.2)
        ours.features.copy_(torch.randn(c, n))
        ours.bias.copy_(torch.randn(n))
        ref._mu.copy_(ours._mu.view(1, n, 1, 2))
        ref.sigma.copy_(ours.sigma.view(ref.sigma.shape))
        ref._features.copy_(ours.features.view(ref._features.shape))
        ref.bias.copy_(ours.bias)
    return ours, ref


@pytest.mark.parametrize("gauss_type", ["full", "uncorrelated", "isotropic"])
def test_gaussian_readout_matches_neuralpredictors_full_gaussian2d(gauss_type):
    ours, ref = _pair(gauss_type)
    b, t = 2, 3
    feats = torch.randn(b, 4, t, 6, 9)
    frames = feats.transpose(1, 2).reshape(b * t, 4, 6, 9)  # neuralpredictors reads images
    shift = torch.rand(b, t, 2) * 0.6 - 0.3
    for train in (False, True):
        ours.train(train)
        ref.train(train)
        for s in (None, shift):
            torch.manual_seed(123)  # the same normal draws for the sampled positions
            y_ours = ours(feats, s)
            torch.manual_seed(123)
            y_ref = ref(frames, shift=None if s is None else s.reshape(b * t, 2))
            y_ref = y_ref.view(b, t, -1).transpose(1, 2)
            assert torch.allclose(y_ours, y_ref, atol=1e-5), (train, s is None)


def test_shifter_matches_neuralpredictors_mlp():
    torch.manual_seed(0)
    ours = MLPShifter(ShifterOptions(shifter_mode=2, shifter_size=5, shifter_layers=3))
    for p in ours.parameters():  # the last layer starts at zero: compare with weights everywhere
        torch.nn.init.normal_(p)
    ref = shifters.MLP(input_features=4, hidden_channels=5, shift_layers=3)
    ref.load_state_dict(ours.state_dict())  # same layer layout: Linear/Tanh x 3
    behavior, pupil = torch.randn(2, 2, 7), torch.randn(2, 2, 7)
    x = torch.cat((behavior, pupil), dim=1).transpose(1, 2).reshape(-1, 4)
    expected = ref(x).view(2, 7, 2)
    assert torch.allclose(ours(behavior, pupil), expected, atol=1e-6)
    assert np.isfinite(expected.detach().numpy()).all()
