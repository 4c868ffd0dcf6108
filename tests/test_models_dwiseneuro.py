"""DwiseNeuro (lRomul/sensorium, 1st place of Sensorium 2023): its core's and readout's parameter
counts against the ones its own code builds, the clips its predictor slides over a trial, the
pooled readout, the fixed-beta softplus and the input layout.

How the reference counts were made: the repository lRomul/sensorium (commit 6849050) was fetched
and its src/models/dwiseneuro.py (plain torch) run on the CPU outside this repository with the
configuration of configs/true_batch_001.py (in_channels 5, core_features (64, 64, 64, 64, 128,
128, 128, 256, 256), spatial_strides (2, 1, 1, 1, 2, 1, 1, 2, 1), spatial_kernel 3,
temporal_kernel 5, expansion_ratio 7, se_reduce_ratio 32, cortex_features (1024, 2048, 4096),
groups 2, softplus_beta 0.07, drop_rate 0.4, drop_path_rate 0.1; readout_outputs: the ten mice's
neuron counts in src/constants.py):

    m = DwiseNeuro(readout_outputs=num_neurons, **config)
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    count(m.core), count(m.cortex), [count(r) for r in m.readouts]

which gave core 3,673,404 + cortex 5,402,624 = 9,076,028 (expansion 6, the model's default and
the distillation stage's: 3,075,736 + 5,402,624 = 8,478,360), and readouts 16,113,336 for 7863
neurons, 15,244,560 for 7440. Our core is their core + cortex. In the same session, with their
weights copied into ours in state-dict order (the same order and shapes), their model and ours
gave the same outputs in eval mode for a random 16-frame clip (max difference 1e-4 on values
about 26, float32 rounding). Checked again on 2026-12-01 (same commit, torch 2.14.1): their
DwiseNeuro with the ten mice's readouts has 170,656,070 parameters, and build_model of
configs/dwiseneuro.yaml with the same neuron counts too (core 9,076,028 + readouts 161,580,042).
Their code is not part of this repository.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurotwin.config import ModelConfig, load_yaml
from neurotwin.errors import ConfigError
from neurotwin.models import build_model
from neurotwin.models.activations import build_activation
from neurotwin.models.clips import Clips
from neurotwin.models.cores.dwiseneuro import DwiseNeuroCore, pad_frames, sinusoidal_position
from neurotwin.models.readouts.pooled_linear import PooledLinearReadout
from neurotwin.models.shifter import ShifterOptions
from neurotwin.registry import ACTIVATIONS, CORES, READOUTS

pytestmark = pytest.mark.usefixtures("one_thread")

THEIR_CORE_AND_CORTEX = {7: 9_076_028, 6: 8_478_360}  # from their code, see the docstring
THEIR_READOUT = {7863: 16_113_336, 7440: 15_244_560}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def closed_form_core(features, strides, expansion, se_ratio, cortex, groups, k=3, kt=5, c_in=5):
    """The parameter count of the architecture as the README describes it, layer by layer."""
    n = features[0] * c_in + 2 * features[0]  # stem conv + BN
    for i, c in enumerate(features):
        out = features[min(i + 1, len(features) - 1)]
        mid, rd = c * expansion, c * expansion // se_ratio
        n += c * mid + 2 * mid  # expansion + BN
        n += mid * k * k + 2 * mid  # depth-wise spatial + BN
        n += mid * kt + 2 * mid  # depth-wise temporal + BN
        n += mid * rd + rd + rd * mid + mid  # squeeze-excitation with biases
        n += mid * out + 2 * out + 2 * out  # projection + BN, shortcut BN
    c = features[-1]
    for width in cortex:
        n += c * width // groups + 2 * width + 2 * width  # grouped conv, BN, shortcut BN
        c = width
    return n


@pytest.mark.parametrize("expansion", [7, 6])
def test_core_parameter_count_equals_their_code(expansion):
    options = CORES.options("dwiseneuro", core_expansion_ratio=expansion)
    core = DwiseNeuroCore(1, (36, 64), options)  # 1 video + 4 behaviour/pupil channels
    assert count(core) == THEIR_CORE_AND_CORTEX[expansion]
    o = options
    assert count(core) == closed_form_core(
        o.core_features, o.core_spatial_strides, expansion, o.core_se_reduce_ratio,
        o.core_cortex_features, o.core_cortex_groups,
    )  # fmt: skip
    assert core.out_channels == 4096 and core.out_shape((36, 64)) == (1, 1)


@pytest.mark.parametrize("neurons", [7863, 7440])
def test_readout_parameter_count_equals_their_code(neurons):
    r = PooledLinearReadout((4096, 1, 1), neurons, READOUTS.options("pooled_linear"))
    assert count(r) == THEIR_READOUT[neurons]
    padded = math.ceil(neurons / 2) * 2
    assert count(r) == padded * 2048 + padded


def test_preset_builds_their_configuration():
    config = load_yaml("configs/dwiseneuro.yaml")
    core = config.model.core
    assert core.name == "dwiseneuro" and core.core_expansion_ratio == 7
    assert (core.core_clip_frames, core.core_clip_step, core.core_frame_size) == (16, 2, [64, 64])
    assert config.model.readout.name == "pooled_linear" and config.model.shifter.shifter_mode == 0
    act = config.model.output_activation
    assert (act.name, act.softplus_beta, act.softplus_learn_beta) == ("softplus", 0.07, False)
    t = config.train
    assert (t.lr, t.weight_decay, t.ema_decay) == (pytest.approx(2.4e-3), 0.05, 0.999)
    assert (t.lr_schedule, t.warmup_epochs, t.epochs, t.min_lr_ratio) == ("cosine", 3, 21, 0.01)
    assert (config.data.cutmix_prob, config.data.cutmix_alpha) == (0.5, 1.0)
    specs = {"m": {"n_neurons": 7863}}
    model = build_model(config.model, specs, in_channels=1, frame_shape=(36, 64))
    assert count(model.core) == THEIR_CORE_AND_CORTEX[7]
    assert count(model.readouts["m"]) == THEIR_READOUT[7863]
    assert count(model.output_activation) == 0  # beta fixed


def test_clips_are_the_windows_their_predictor_slides():
    """Their predictor: for every last frame e in [(size - 1) step, T), the window
    range(e - (size - 1) step, e + 1, step); ours with stride 1 are the same set."""
    clips = Clips(frames=16, step=2, stride=1)
    for t in (32, 33, 50, 300):
        ours = {tuple(row.tolist()) for row in clips.index(t, training=False)}
        theirs = {tuple(range(e - 30, e + 1, 2)) for e in range(30, t)}
        assert ours == theirs
    training = clips.index(32, training=True)  # a crop of 32 frames: two clips, every frame once
    assert sorted(training.flatten().tolist()) == list(range(32))
    side_by_side = Clips(16, 2, stride=16).index(300, training=False)
    assert set(side_by_side.flatten().tolist()) == set(range(300))
    with pytest.raises(ValueError, match="at least 32 frames"):
        clips.index(31, training=False)
    # a trial too short: one clip per phase, as long as the phase
    short = clips.groups(31, training=True)
    assert [g.tolist() for g in short] == [[list(range(0, 31, 2))], [list(range(1, 31, 2))]]
    assert [g.shape for g in clips.groups(5, training=False)] == [(1, 3), (1, 2)]


def test_model_output_is_the_mean_over_the_clips_holding_each_frame():
    torch.manual_seed(0)
    config = ModelConfig(
        core=CORES.options(
            "dwiseneuro", core_features=[4, 8], core_spatial_strides=[2, 1],
            core_expansion_ratio=2, core_se_reduce_ratio=2, core_cortex_features=[8],
            core_frame_size=[12, 16], core_clip_frames=3, core_clip_batch=5,
        ),
        readout=READOUTS.options("pooled_linear"),
        shifter=ShifterOptions(shifter_mode=0),
        output_activation=ACTIVATIONS.options("softplus", softplus_beta=0.5, softplus_learn_beta=False),
    )  # fmt: skip
    model = build_model(config, {"m": {"n_neurons": 5}}, frame_shape=(10, 16)).eval()
    video, behavior, pupil = (
        torch.randn(2, 1, 13, 10, 16),
        torch.randn(2, 2, 13),
        torch.randn(2, 2, 13),
    )
    with torch.no_grad():
        y = model(video, "m", behavior, pupil)
        total, seen = torch.zeros(2, 5, 13), torch.zeros(13)
        for end in range(4, 13):  # clips of frames end-4, end-2, end
            idx = list(range(end - 4, end + 1, 2))
            rates = model._predict(video[:, :, idx], "m", behavior[..., idx], pupil[..., idx], True)
            total[..., idx] += rates
            seen[idx] += 1
    assert torch.allclose(y, total / seen, atol=1e-6)
    assert (y > 0).all()


def test_input_is_padded_centred_with_behaviour_everywhere():
    video = torch.ones(1, 1, 2, 36, 64)
    padded = pad_frames(video, (64, 64))
    assert padded.shape[-2:] == (64, 64)
    assert padded[..., 14:50, :].eq(1).all() and padded[..., :14, :].eq(0).all()
    assert padded[..., 50:, :].eq(0).all()
    with pytest.raises(ValueError, match="do not fit"):
        pad_frames(torch.ones(1, 1, 1, 70, 64), (64, 64))
    with pytest.raises(ValueError, match="do not fit"):
        DwiseNeuroCore(1, (72, 64), CORES.options("dwiseneuro"))


def test_position_encoding_splits_channels_over_time_height_width():
    enc = sinusoidal_position(64, (16, 8, 8), torch.zeros(()))[0]  # (64, 16, 8, 8)
    assert enc.shape == (64, 16, 8, 8)
    # 22 channels per axis: channel 0 is sin(t), channel 11 cos(t); 22 sin(y); 44 sin(x)
    t = torch.arange(16.0)
    assert torch.allclose(enc[0, :, 0, 0], torch.sin(t)) and torch.allclose(enc[11, :, 3, 5], torch.cos(t))  # fmt: skip
    assert torch.allclose(enc[22, 0, :, 0], torch.sin(torch.arange(8.0)))
    assert torch.allclose(enc[44, 0, 0, :], torch.sin(torch.arange(8.0)))
    assert torch.allclose(enc[1, :, 0, 0], torch.sin(t * 10000 ** (-2 / 22)))


def test_pooled_readout_groups_padding_bias_and_no_shift():
    torch.manual_seed(0)
    bias = torch.arange(5.0)
    options = READOUTS.options("pooled_linear", readout_dropout=0.0)
    r = PooledLinearReadout((4, 3, 2), 5, options, bias_init=bias).eval()
    assert r.weight.shape == (6, 2) and torch.equal(r.bias.detach()[:5], bias)
    x = torch.randn(2, 4, 7, 3, 2)
    pooled = x.mean((3, 4))
    w = r.weight.detach()
    by_hand = (
        torch.cat(
            (
                torch.einsum("bct,nc->bnt", pooled[:, :2], w[:3]),
                torch.einsum("bct,nc->bnt", pooled[:, 2:], w[3:]),
            ),  # fmt: skip
            dim=1,
        )[:, :5]
        + bias[None, :, None]
    )
    assert torch.allclose(r(x), by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="no positions"):
        r(x, torch.zeros(2, 7, 2))
    with pytest.raises(ConfigError, match="--readout_groups"):
        PooledLinearReadout((5, 1, 1), 3, options)  # 5 channels in 2 groups
    config = ModelConfig(
        core=CORES.options("conv2d", core_num_layers=1, core_hidden_dim=4),
        readout=options, shifter=ShifterOptions(shifter_mode=1),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--shifter_mode 0"):
        build_model(config, {"m": {"n_neurons": 3}}, frame_shape=(6, 8))


def test_fixed_beta_softplus_is_torchs_softplus():
    act = build_activation(ACTIVATIONS.options("softplus", softplus_beta=0.07, softplus_learn_beta=False))  # fmt: skip
    x = torch.linspace(-300, 400, 101)
    assert torch.allclose(act(x), torch.nn.functional.softplus(x, beta=0.07), atol=1e-5)
    assert not list(act.parameters())
    target = torch.tensor([0.05, 2.0, 30.0])
    assert torch.allclose(act(act.inverse(target)), target, rtol=1e-4)
    learnable = build_activation(ACTIVATIONS.options("softplus", softplus_beta=0.07))
    assert [n for n, _ in learnable.named_parameters()] == ["log_beta"]
    assert math.isclose(learnable.log_beta.exp().item(), 0.07, rel_tol=1e-6)
    with pytest.raises(ConfigError, match="--softplus_beta"):
        ACTIVATIONS.options("softplus", softplus_beta=0.0)


def test_initialisation_follows_their_init_weights():
    torch.manual_seed(0)
    core = DwiseNeuroCore(1, (36, 64), CORES.options("dwiseneuro", core_expansion_ratio=7))
    conv = core.blocks[0].expand[0]  # 64 -> 448, 1x1x1: std sqrt(2 / 448)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 448), rel=0.02)
    depthwise = core.blocks[0].spatial[0]  # groups = channels: fan_out 9, std sqrt(2 / 9)
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    assert torch.equal(core.blocks[0].se.reduce.bias, torch.zeros_like(core.blocks[0].se.reduce.bias))  # fmt: skip
    np.testing.assert_array_equal(core.cortex[0].mix[1].weight.detach().numpy(), 1.0)
