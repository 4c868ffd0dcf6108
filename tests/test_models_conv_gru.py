"""conv_gru (the Sensorium 2023 GRU baseline) against neuralpredictors' Stacked2dCore and its
regularisers, the ConvGRU step against its equations, and the modulator: the behaviour gain it
learns against a known one."""

from __future__ import annotations

import collections
import collections.abc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurotwin.config import ModelConfig, load_yaml
from neurotwin.models import build_model
from neurotwin.models.cores.conv_gru import ConvGRUCell, ConvGRUCore, laplace_l2
from neurotwin.models.modulators.mlp import MLPModulator, MLPModulatorOptions
from neurotwin.models.shifter import ShifterOptions
from neurotwin.registry import CORES, MODULATORS, READOUTS

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(
    core_num_layers=3, core_hidden_dim=8, core_spatial_input_kernel=5, core_spatial_hidden_kernel=3,
    core_gru_channels=6, core_gru_input_kernel=3, core_gru_rec_kernel=5,
)  # fmt: skip


def neuralpredictors_core(**kw):
    """neuralpredictors 0.3.0's Stacked2dCore (its conv2d module still imports Iterable from
    collections, gone in Python 3.10: the alias is put back for the import)."""
    if not hasattr(collections, "Iterable"):
        collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cores = pytest.importorskip("neuralpredictors.layers.cores")
        return cores.Stacked2dCore(**kw)


def test_2d_stack_and_regulariser_match_neuralpredictors():
    """The sensorium_2023 core_dict (models_demo.ipynb) at a small size."""
    torch.manual_seed(0)
    ref = neuralpredictors_core(
        input_channels=3, hidden_channels=8, input_kern=5, hidden_kern=3, layers=3,
        gamma_input=500, gamma_hidden=500_000, skip=0, pad_input=False, final_nonlinearity=False,
        bias=True, momentum=0.9, batch_norm=True, hidden_dilation=1, laplace_padding=None,
        input_regularizer="LaplaceL2norm", stack=-1, use_avg_reg=False,
    )  # fmt: skip
    ours = ConvGRUCore(1, (12, 16), CORES.options("conv_gru", **SMALL))  # + 2 behaviour channels
    theirs = [v for k, v in ref.state_dict().items() if "laplace" not in k]
    mine = list(ours.stack.state_dict().items())
    assert [tuple(v.shape) for _, v in mine] == [tuple(v.shape) for v in theirs]
    with torch.no_grad():
        for (key, v), r in zip(mine, theirs):
            if r.is_floating_point():  # random weights and batch-norm statistics (variances > 0)
                r.copy_(torch.rand_like(r) + 0.5 if "running_var" in key else torch.randn_like(r) * 0.3)  # fmt: skip
            v.copy_(r)
    x = torch.randn(7, 3, 12, 16)
    for mode in ("eval", "train"):
        getattr(ref, mode)()
        getattr(ours, mode)()
        with torch.no_grad():
            assert torch.allclose(ours.stack(x), ref(x), atol=1e-5), mode
    assert torch.allclose(ours.regularizer(), ref.regularizer(), rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from neuralpredictors.regularizers import LaplaceL2norm
    w = torch.randn(4, 3, 7, 7)
    assert torch.allclose(laplace_l2(w), LaplaceL2norm(padding=None)(w), rtol=1e-6)


def test_gru_step_follows_its_equations():
    """neuralpredictors' ConvGRUCell, gate by gate: separate convolutions of x and h."""
    torch.manual_seed(0)
    cell = ConvGRUCell(4, 3, 3, 5)
    x, h = torch.randn(2, 4, 6, 7), torch.randn(2, 3, 6, 7)
    wx, bx = cell.input_gates.weight.chunk(3), cell.input_gates.bias.chunk(3)
    wh, bh = cell.state_gates.weight.chunk(2), cell.state_gates.bias.chunk(2)

    def conv(v, w, b, k):
        return F.conv2d(v, w, b, padding=k // 2)

    update = torch.sigmoid(conv(x, wx[0], bx[0], 3) + conv(h, wh[0], bh[0], 5))
    reset = torch.sigmoid(conv(x, wx[1], bx[1], 3) + conv(h, wh[1], bh[1], 5))
    out = torch.tanh(conv(x, wx[2], bx[2], 3) + cell.state_out(h * reset))
    assert torch.allclose(cell(x, h), h * (1 - update) + out * update, atol=1e-6)
    # parameters: three input and three state convolutions with biases, as neuralpredictors
    assert sum(p.numel() for p in cell.parameters()) == 3 * (4 * 3 * 9 + 3) + 3 * (3 * 3 * 25 + 3)


def test_core_shapes_regulariser_weights_and_compile_parts():
    core = ConvGRUCore(1, (12, 16), CORES.options("conv_gru", **SMALL))
    assert core.out_shape((12, 16)) == (8, 12)  # the first layer is not padded: 5 - 1 lost
    video, behavior = torch.randn(2, 1, 5, 12, 16), torch.randn(2, 2, 5)
    out = core(video, behavior)
    assert out.shape == (2, 6, 5, 8, 12)
    padded = ConvGRUCore(1, (12, 16), CORES.options("conv_gru", core_pad_input=True, **SMALL))
    assert padded.out_shape((12, 16)) == (12, 16)
    no_reg = CORES.options("conv_gru", core_gamma_input=0.0, core_gamma_hidden=0.0, **SMALL)
    assert ConvGRUCore(1, (12, 16), no_reg).regularizer().item() == 0.0
    core.compile()  # the 2D stack and the GRU step, not the loop over frames
    assert core.stack._compiled_call_impl is not None and core.cell._compiled_call_impl is not None
    assert core._compiled_call_impl is None


def test_preset_is_the_baseline_of_sensorium_2023():
    config = load_yaml("configs/sensorium_gru.yaml")
    core = config.model.core
    assert core.name == "conv_gru" and core.core_behavior_mode == 1  # video + 2 behaviour channels
    assert (core.core_num_layers, core.core_hidden_dim) == (4, 64)
    assert (core.core_spatial_input_kernel, core.core_spatial_hidden_kernel) == (9, 7)
    assert (core.core_gru_channels, core.core_gru_input_kernel, core.core_gru_rec_kernel) == (64, 7, 7)  # fmt: skip
    b = config.data.batch_size  # their gammas weigh a loss summed over the batch; ours averages
    assert (core.core_gamma_input * b, core.core_gamma_hidden * b) == (500.0, 500_000.0)
    assert config.model.readout.readout_grid_mode == 1 and config.model.shifter.shifter_mode == 1
    t = config.train
    assert (t.lr, t.lr_patience, t.lr_factor, t.max_reduce, t.epochs) == (0.005, 5, 0.3, 3, 200)
    coordinates = np.random.default_rng(0).normal(size=(10, 3))
    specs = {"m": {"n_neurons": 10, "coordinates": coordinates}}
    model = build_model(config.model, specs, frame_shape=(36, 64))
    assert model.core.out_shape((36, 64)) == (28, 56)


# ------------------------------------------------------------------------------------------------
# modulator
# ------------------------------------------------------------------------------------------------


def test_modulator_recovers_a_known_behaviour_gain():
    """Ground truth: neuron n's gain is exp(a_n z_run + c_n z_pupil), |log gain| <= 0.8; the
    MLP modulator is fitted (Adam, 600 steps) to responses y x gain of random drives y and must
    give the true gain on held-out behaviour within 5% (median relative error below 1.5%)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, t = 6, 400
    a = torch.tensor(rng.uniform(-0.4, 0.4, n), dtype=torch.float32)
    c = torch.tensor(rng.uniform(-0.3, 0.3, n), dtype=torch.float32)

    def sample(b):
        behavior = torch.randn(b, 2, t)
        true_gain = torch.exp(a[None, :, None] * behavior[:, 1:2] + c[None, :, None] * behavior[:, :1])  # fmt: skip
        return behavior, true_gain

    modulator = MLPModulator(n, MLPModulatorOptions(modulator_layers=3, modulator_hidden=16))
    y = torch.ones(1, n, t)
    assert torch.equal(modulator(y, torch.randn(1, 2, t), None), y)  # starts at gain 1
    optimizer = torch.optim.Adam(modulator.parameters(), lr=0.01)
    for _ in range(600):
        behavior, true_gain = sample(4)
        drive = torch.rand(4, n, t) + 0.5
        loss = (modulator(drive, behavior, None) - drive * true_gain).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    behavior, true_gain = sample(2)
    behavior = behavior.clamp(-2, 2)  # within the range the fit saw often
    true_gain = torch.exp(a[None, :, None] * behavior[:, 1:2] + c[None, :, None] * behavior[:, :1])  # fmt: skip
    with torch.no_grad():
        error = (modulator.gain(behavior, None) / true_gain - 1).abs()
    assert error.max() < 0.05 and error.median() < 0.015


def test_modulator_in_the_model_per_session_with_its_regulariser():
    torch.manual_seed(0)
    specs = {"a": {"n_neurons": 4}, "b": {"n_neurons": 3}}
    base = ModelConfig(
        core=CORES.options("conv2d", core_num_layers=1, core_hidden_dim=3, core_behavior_mode=0),
        readout=READOUTS.options("gaussian", readout_grid_mode=0),
        shifter=ShifterOptions(shifter_mode=0),
    )
    with_mod = ModelConfig(
        core=base.core, readout=base.readout, shifter=base.shifter,
        modulator=MODULATORS.options("mlp", modulator_mode=2, modulator_reg_weight=2.0),
    )  # fmt: skip
    torch.manual_seed(1)
    plain = build_model(base, specs, frame_shape=(6, 8)).eval()
    torch.manual_seed(1)
    model = build_model(with_mod, specs, frame_shape=(6, 8)).eval()
    assert set(model.modulators) == {"a", "b"} and plain.modulators is None
    assert model.modulators["b"].last.out_features == 3
    video, behavior, pupil = torch.randn(2, 1, 5, 6, 8), torch.randn(2, 2, 5), torch.randn(2, 2, 5)
    assert torch.allclose(model(video, "a", behavior, pupil), plain(video, "a", behavior, pupil))
    with torch.no_grad():
        model.modulators["a"].last.weight.normal_()
    reg = 2.0 * model.modulators["a"].last.weight.abs().mean()
    assert torch.allclose(model.regularizer("a") - plain.regularizer("a"), reg)
    model.train()
    model(video, "a", behavior, pupil).sum().backward()
    assert model.modulators["a"].last.weight.grad.abs().sum() > 0
    assert model.modulators["b"].last.weight.grad is None
    with pytest.raises(ValueError, match="needs behaviour"):
        model(video, "a", behavior, None)
