"""The behaviour gain modulator ("gain"): gain 1 at the start, a planted log-linear gain
recovered by the Poisson loss, and its place in the model (on the activated rates, per session,
centred on the mean behaviour the model sees, saved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotwin.config import ModelConfig
from neurotwin.errors import ConfigError
from neurotwin.models import build_model
from neurotwin.models.modulators.gain import GainModulator, GainModulatorOptions
from neurotwin.registry import CORES, MODULATORS
from neurotwin.training.losses import poisson_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(modulator: str, centre=(1.0, 2.0)):
    cfg = ModelConfig()
    cfg.core = CORES.options(
        "conv3d", core_hidden_dim=4, core_num_layers=1, core_spatial_input_kernel=3
    )
    cfg.modulator = MODULATORS.options(modulator)
    rng = np.random.default_rng(0)
    specs = {
        s: {
            "n_neurons": 6,
            "coordinates": rng.normal(size=(6, 3)),
            "mean_response": np.ones(6),
            "behavior_mean": np.asarray(centre),
        }
        for s in ("a", "b")
    }
    torch.manual_seed(0)
    return build_model(cfg, specs, in_channels=1, frame_shape=(8, 10))


def test_gain_is_one_at_the_start_and_the_model_matches_one_without():
    with_mod, without = small_model("gain"), small_model("none")
    assert set(with_mod.modulators) == {"a", "b"} and without.modulators is None
    state = {k: v for k, v in with_mod.state_dict().items() if not k.startswith("modulators.")}
    without.load_state_dict(state)
    video, behavior = torch.randn(2, 1, 5, 8, 10), torch.randn(2, 2, 5) + 3
    pupil = torch.zeros(2, 2, 5)
    with_mod.eval(), without.eval()
    assert torch.equal(with_mod(video, "a", behavior, pupil), without(video, "a", behavior, pupil))
    torch.testing.assert_close(with_mod.modulators["a"].centre.flatten(), torch.tensor([1.0, 2.0]))
    assert "modulators.b.weight" in with_mod.state_dict()


def test_the_gain_multiplies_the_activated_rates():
    """ELU+1 rates times the gain (not ELU+1 of the readout's output times it)."""
    model = small_model("gain").eval()
    with torch.no_grad():
        model.modulators["a"].weight.normal_()
    video, behavior = torch.randn(2, 1, 5, 8, 10), torch.randn(2, 2, 5) + 3
    pupil = torch.zeros(2, 2, 5)
    y = model(video, "a", behavior, pupil, activate=False)
    t = y.shape[-1]
    gain = model.modulators["a"].gain(behavior[..., -t:], None)
    expected = model.activation("a")(y) * gain
    torch.testing.assert_close(model(video, "a", behavior, pupil), expected)


def test_a_planted_gain_is_recovered():
    """Counts ~ Poisson(base * exp(w . (b - c))): fitting w by the Poisson loss finds it within
    0.05 (2000 samples per neuron)."""
    g = torch.Generator().manual_seed(1)
    n, t = 5, 2000
    centre = torch.tensor([2.0, 3.0])
    spread = torch.tensor([0.5, 1.0]).view(1, 2, 1)
    behavior = centre.view(1, 2, 1) + torch.randn(1, 2, t, generator=g) * spread
    w_true = torch.tensor([[0.3, 0.2], [-0.2, 0.4], [0.0, 0.0], [0.5, -0.1], [0.1, 0.25]])
    base = torch.full((1, n, t), 2.0)
    rates = base * torch.exp(torch.einsum("nc,bct->bnt", w_true, behavior - centre.view(1, 2, 1)))
    counts = torch.poisson(rates, generator=g)
    modulator = GainModulator(n, behavior_mean=centre)
    optimizer = torch.optim.Adam(modulator.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        loss = poisson_loss(modulator(base, behavior, None), counts)
        loss.backward()
        optimizer.step()
    assert torch.allclose(modulator.weight.detach(), w_true, atol=0.05)


def test_log_gain_is_clipped_and_bad_centres_are_refused():
    modulator = GainModulator(1, GainModulatorOptions(modulator_max_log_gain=1.0))
    with torch.no_grad():
        modulator.weight.fill_(100.0)
    gain = modulator(torch.ones(1, 1, 2), torch.tensor([[[1.0, -1.0], [1.0, -1.0]]]), None)
    torch.testing.assert_close(gain, torch.tensor([[[np.e, 1 / np.e]]], dtype=torch.float32))
    with pytest.raises(ConfigError, match="behavior_mean"):
        GainModulator(3, behavior_mean=np.array([1.0, np.nan]))
    with pytest.raises(ConfigError, match="modulator_max_log_gain"):
        GainModulatorOptions(modulator_max_log_gain=0).check()


def test_gain_flag_selects_the_part_and_its_option():
    from neurotwin.cli.train import build_parser, resolve_config

    args = build_parser().parse_args(["--modulator", "gain", "--modulator_max_log_gain", "2"])
    config = resolve_config(args)
    assert isinstance(config.model.modulator, GainModulatorOptions)
    assert config.model.modulator.modulator_max_log_gain == 2.0


def test_session_specs_centre_is_the_mean_behaviour_the_model_sees(synthetic_mice):
    from neurotwin.config import DataConfig
    from neurotwin.data import loaders

    data = DataConfig(data_dir=str(synthetic_mice), num_workers=0, crop_frame=-1)
    specs = loaders.session_specs(data)
    built = loaders.build_loaders(data, {"train": "train"}, seed=0)["train"]
    for name, loader in built.items():
        frames = [b["behavior"].transpose(0, 1).reshape(2, -1) for b in loader]  # whole trials
        mean = torch.cat(frames, dim=1).mean(1).numpy()
        np.testing.assert_allclose(specs[name]["behavior_mean"], mean, rtol=1e-3)
