"""Models: shapes, positivity, gradients, causality, sessions, readout maths, registry."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from neurotwin.config import ModelConfig, flags, option
from neurotwin.errors import ConfigError
from neurotwin.models import ACTIVATIONS, CORES, READOUTS, build_model, parameter_counts, summary
from neurotwin.models.activations import build_activation
from neurotwin.models.cores.base import Core, CoreOptions
from neurotwin.models.cores.pretrained import FrozenConvStack
from neurotwin.models.readouts.factorized import FactorizedOptions, FactorizedReadout
from neurotwin.models.readouts.gaussian import GaussianOptions, GaussianReadout
from neurotwin.models.shifter import MLPShifter, ShifterOptions

FRAME = (12, 16)
CORE_NAMES = ["conv2d", "conv3d", "vivit", "pretrained", "conv_gru", "dwiseneuro"]
READOUT_NAMES = ["gaussian", "factorized"]
# each core with the readouts whose every parameter its features reach (dwiseneuro's features
# are 1x1: positions mean nothing there, its own readout has none)
CORE_READOUTS = [(c, r) for c in CORE_NAMES if c != "dwiseneuro" for r in READOUT_NAMES] + [
    ("dwiseneuro", "pooled_linear")
]

SMALL_VIVIT = dict(
    core_emb_dim=16,
    core_spatial_depth=1,
    core_temporal_depth=2,
    core_num_heads=2,
    core_head_dim=8,
    core_ff_dim=24,
    core_spatial_patch_size=3,
    core_spatial_patch_stride=2,
    core_temporal_patch_size=3,
    core_reg_tokens=2,
)
SMALL_CONV = dict(
    core_hidden_dim=6,
    core_num_layers=2,
    core_spatial_input_kernel=5,
    core_spatial_hidden_kernel=3,
    core_temporal_input_kernel=3,
    core_temporal_hidden_kernel=3,
)
NO_DROPOUT = dict(core_p_dropout=0.0, core_mha_dropout=0.0, core_ff_dropout=0.0, core_drop_path=0.0)
SMALL_GRU = dict(core_gru_channels=5, core_gru_input_kernel=3, core_gru_rec_kernel=3)
SMALL_DWISE = dict(
    core_features=[6, 8],
    core_spatial_strides=[2, 1],
    core_expansion_ratio=2,
    core_se_reduce_ratio=4,
    core_cortex_features=[8, 12],
    core_frame_size=[16, 16],
    core_clip_frames=3,  # clips of 3 frames, every 2nd: trials of >= 6 frames
)


# small models on a shared CPU: one intra-op thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(core="conv3d", readout="gaussian", shifter_mode=1, activation="elu1", **core_kw):
    """Small parts: of SMALL_CONV, SMALL_VIVIT and `core_kw`, the options the core has."""
    own = {f.name for f in dataclasses.fields(CORES.options_class(core))}
    small = {**SMALL_CONV, **SMALL_VIVIT, **SMALL_GRU, **SMALL_DWISE, **core_kw}
    values = {k: v for k, v in small.items() if k in own}
    return ModelConfig(
        core=CORES.options(core, **values),
        readout=READOUTS.options(readout),
        shifter=ShifterOptions(shifter_mode=shifter_mode),
        output_activation=ACTIVATIONS.options(activation),
    )


def gaussian(in_shape, n, coordinates=None, bias_init=None, **options) -> GaussianReadout:
    """A Gaussian readout with options given without their `readout_` prefix."""
    o = GaussianOptions(**{f"readout_{k}": v for k, v in options.items()})
    return GaussianReadout(in_shape, n, o, coordinates=coordinates, bias_init=bias_init)


def factorized(in_shape, n, **options) -> FactorizedReadout:
    o = FactorizedOptions(**{f"readout_{k}": v for k, v in options.items()})
    return FactorizedReadout(in_shape, n, o)


def make_specs(sizes=(("mouse_a", 7), ("mouse_b", 5)), seed=0):
    rng = np.random.default_rng(seed)
    return {
        name: {
            "n_neurons": n,
            "coordinates": rng.normal(size=(n, 3)) * 100,
            "mean_response": rng.uniform(0.2, 2.0, size=n),
            "unit_ids": np.arange(n),
        }
        for name, n in sizes
    }


def make_inputs(b=2, t=8, seed=0, frame=FRAME):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, 1, t, *frame, generator=g)
    behavior = torch.randn(b, 2, t, generator=g)
    pupil = torch.randn(b, 2, t, generator=g) * 0.3
    return video, behavior, pupil


def build(cfg, specs=None, frame=FRAME):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretrained without weights warns
        return build_model(cfg, specs or make_specs(), in_channels=1, frame_shape=frame)


# ----------------------------------------------------------------------------------------------
# shapes and positivity for every core x readout x shifter mode
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shifter_mode", [0, 1, 2])
@pytest.mark.parametrize("readout", READOUT_NAMES)
@pytest.mark.parametrize("core", CORE_NAMES)
def test_output_shapes_and_positive_rates(core, readout, shifter_mode):
    torch.manual_seed(0)
    model = build(make_config(core, readout, shifter_mode))
    video, behavior, pupil = make_inputs(b=2, t=8)
    for session, n in (("mouse_a", 7), ("mouse_b", 5)):
        y = model.train()(video, session, behavior, pupil)
        assert y.shape == (2, n, 8)
        assert torch.isfinite(y).all() and (y > 0).all()
    model.eval()
    with torch.no_grad():
        y = model(video, "mouse_a", behavior, pupil)
        assert y.shape == (2, 7, 8) and (y > 0).all()
        assert torch.equal(y, model(video, "mouse_a", behavior, pupil))  # eval is deterministic
    assert (model.shifters is None) == (shifter_mode == 0)


@pytest.mark.parametrize("activation", ["elu1", "exp", "softplus", "sigmoid"])
def test_output_activations_positive_and_invertible(activation):
    act = build_activation(activation)
    x = torch.cat((torch.linspace(-80, 30, 200), torch.tensor([-1e4])))
    y = act(x)
    assert (y > 0).all() and torch.isfinite(y).all()
    target = torch.tensor([0.05, 0.5, 0.9])
    assert torch.allclose(act(act.inverse(target)), target, atol=1e-4)


def test_activation_none_and_unknown():
    act = build_activation("none")
    x = torch.randn(5)
    assert torch.equal(act(x), x)
    with pytest.raises(ConfigError, match="unknown output activation"):
        build_activation("relu6")


def test_softplus_beta_is_learnable():
    act = build_activation("softplus")
    act(torch.randn(10)).sum().backward()
    assert act.log_beta.grad is not None and act.log_beta.grad.abs() > 0


def test_bias_initialised_so_initial_rate_matches_mean_response():
    specs = make_specs()
    model = build(make_config("conv3d", "gaussian", 0, activation="exp"), specs)
    readout = model.readouts["mouse_a"]
    rates = model.activation("mouse_a")(readout.bias.detach())
    assert np.allclose(rates.numpy(), specs["mouse_a"]["mean_response"], rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------


def _assert_all_grads(model):
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    return missing


@pytest.mark.parametrize("core,readout", CORE_READOUTS)
def test_gradients_reach_every_trainable_parameter(core, readout):
    torch.manual_seed(1)
    kw = dict(NO_DROPOUT, core_behavior_tokens=True) if core == "vivit" else {}
    shifter_mode = 0 if readout == "pooled_linear" else 2
    cfg = make_config(core, readout, shifter_mode=shifter_mode, activation="softplus", **kw)
    cfg.readout.readout_reg_weight = 0.01
    specs = make_specs(sizes=(("mouse_a", 7),))
    model = build(cfg, specs).train()
    for shifter in (model.shifters or {}).values():  # last layer starts at 0: no gradient before
        torch.nn.init.normal_(shifter.mlp[-2].weight, std=0.1)
    video, behavior, pupil = make_inputs(b=2, t=6)
    y = model(video, "mouse_a", behavior, pupil)
    loss = (y - y.detach().mean()).square().mean() + model.regularizer("mouse_a")
    loss.backward()
    assert _assert_all_grads(model) == []
    if core == "pretrained":
        frozen = [n for n, p in model.core.named_parameters() if not p.requires_grad]
        assert frozen and all(n.startswith("backbone.") for n in frozen)
        assert all(p.grad is None for p in model.core.backbone.parameters())


@pytest.mark.parametrize("grid_mode", [0, 2, 3])
@pytest.mark.parametrize("gauss_type", ["full", "uncorrelated", "isotropic"])
def test_gaussian_readout_variants_get_gradients(grid_mode, gauss_type):
    torch.manual_seed(0)
    r = gaussian(
        (4, 5, 6), 9, coordinates=np.random.default_rng(0).normal(size=(9, 3)),
        grid_mode=grid_mode, gauss_type=gauss_type, init_sigma=0.2,
    )  # fmt: skip
    r.train()
    r(torch.randn(2, 4, 3, 5, 6)).square().sum().backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in r.parameters())


def test_session_only_touches_its_own_readout_and_shifter():
    torch.manual_seed(0)
    model = build(make_config("conv3d", "gaussian", 2), make_specs())
    video, behavior, pupil = make_inputs()
    y = model(video, "mouse_b", behavior, pupil)
    assert y.shape[1] == 5
    (y.sum() + model.regularizer("mouse_b")).backward()
    for part in (model.readouts, model.shifters, model.output_activation):
        assert all(p.grad is None for p in part["mouse_a"].parameters())
    assert any(p.grad is not None for p in model.readouts["mouse_b"].parameters())
    assert all(p.grad is not None for p in model.shifters["mouse_b"].parameters())
    with pytest.raises(KeyError, match="unknown session"):
        model(video, "mouse_c", behavior, pupil)


def test_regularizers():
    r = gaussian((3, 4, 4), 5, grid_mode=0, reg_weight=0.5)
    with torch.no_grad():
        r.features.copy_(torch.randn(3, 5))
    assert torch.isclose(r.regularizer(), 0.5 * r.features.abs().sum())
    f = factorized((3, 4, 4), 5, reg_weight=2.0)
    expected = 2.0 * sum(
        (f.mask[n].abs().sum() * f.features[n].abs().sum()).item() for n in range(5)
    )
    assert np.isclose(f.regularizer().item(), expected, rtol=1e-5)
    model = build(make_config("conv2d", "gaussian", 1), make_specs())
    assert model.regularizer("mouse_a").ndim == 0


# ----------------------------------------------------------------------------------------------
# causality and determinism
# ----------------------------------------------------------------------------------------------


def _causality_check(model, t_len=10, t_star=6, perturb_behavior=True):
    model.eval()
    video, behavior, pupil = make_inputs(b=1, t=t_len, seed=3)
    with torch.no_grad():
        y0 = model(video, "mouse_a", behavior, pupil)
        video2, behavior2, pupil2 = video.clone(), behavior.clone(), pupil.clone()
        video2[:, :, t_star:] += torch.randn_like(video2[:, :, t_star:]) * 3
        if perturb_behavior:
            behavior2[..., t_star:] += 2.0
            pupil2[..., t_star:] -= 0.5
        y1 = model(video2, "mouse_a", behavior2, pupil2)
    offset = t_len - y0.shape[-1]  # outputs align with the last T' frames
    before = t_star - offset
    return (y0[..., :before] - y1[..., :before]).abs().max().item(), (
        y0[..., before:] - y1[..., before:]
    ).abs().max().item()


@pytest.mark.parametrize(
    "core,kw",
    [
        ("conv3d", {}),
        ("conv_gru", {}),
        ("conv_gru", {"core_pad_input": True, "core_behavior_mode": 2}),
        ("vivit", {"core_pos_encoding": "rope", "core_behavior_tokens": True}),
        ("vivit", {"core_pos_encoding": "learned", "core_parallel_attention": False}),
        ("vivit", {"core_temporal_patch_stride": 2, "core_norm_qk": True}),
        ("vivit", {"core_pad_frame": False, "core_reg_tokens": 0}),
    ],
)
def test_causal_cores_are_causal(core, kw):
    torch.manual_seed(0)
    cfg = make_config(core, "gaussian", 2, core_use_causal_attention=True, **kw)
    diff_before, diff_after = _causality_check(build(cfg, make_specs()))
    assert diff_before < 1e-5
    assert diff_after > 1e-3


@pytest.mark.parametrize(
    "core,kw",
    [("vivit", {"core_use_causal_attention": False}), ("dwiseneuro", {"core_drop_path": 0.0})],
)
def test_non_causal_cores_see_the_future(core, kw):
    torch.manual_seed(0)
    cfg = make_config(core, "gaussian", 0, **kw)
    diff_before, _ = _causality_check(build(cfg, make_specs()))
    assert diff_before > 1e-4


def test_gaussian_readout_samples_in_training_only():
    torch.manual_seed(0)
    r = gaussian((4, 5, 6), 3, grid_mode=0, init_sigma=0.3)
    x = torch.randn(1, 4, 2, 5, 6)
    r.train()
    assert not torch.equal(r(x), r(x))
    r.eval()
    assert torch.equal(r(x), r(x))
    assert torch.allclose(r(x), r(x, sample=False))


# ----------------------------------------------------------------------------------------------
# the Gaussian readout against bilinear sampling by hand
# ----------------------------------------------------------------------------------------------


def _bilinear(fmap: np.ndarray, x: float, y: float) -> np.ndarray:
    """fmap (C, h, w) at grid coordinates (x, y) in [-1, 1], align_corners=True, zero outside."""
    c, h, w = fmap.shape
    px, py = (x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    out = np.zeros(c)
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * fmap[:, yi, xi]
    return out


def test_gaussian_readout_matches_bilinear_sampling_by_hand():
    torch.manual_seed(0)
    c, h, w, n = 3, 5, 7, 4
    r = gaussian((c, h, w), n, grid_mode=0, bias_mode=1).eval()
    mu = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.3, -0.45], [-0.8, 0.65]])
    with torch.no_grad():
        r._mu.copy_(mu)
        r.features.copy_(torch.randn(c, n))
        r.bias.copy_(torch.randn(n))
    feats = torch.randn(2, c, 3, h, w)
    shift = torch.rand(2, 3, 2) * 0.4 - 0.2
    for s in (None, shift):
        y = r(feats, s).detach().numpy()  # (B, N, T)
        for bi in range(2):
            for ti in range(3):
                fmap = feats[bi, :, ti].numpy()
                for ni in range(n):
                    px, py = mu[ni].tolist()
                    if s is not None:
                        px, py = px + s[bi, ti, 0].item(), py + s[bi, ti, 1].item()
                    v = _bilinear(fmap, px, py) @ r.features[:, ni].detach().numpy()
                    assert np.isclose(y[bi, ni, ti], v + r.bias[ni].item(), atol=1e-5)
    # the corners are the corner pixels' centres (align_corners=True convention)
    y = r(feats).detach()
    f = r.features.detach()
    assert torch.allclose(y[:, 0], torch.einsum("bct,c->bt", feats[..., 0, 0], f[:, 0]) + r.bias[0])
    assert torch.allclose(
        y[:, 1], torch.einsum("bct,c->bt", feats[..., -1, -1], f[:, 1]) + r.bias[1]
    )


def test_gaussian_positions_from_coordinates():
    coords = np.array([[0.0, 10.0, 5.0], [100.0, 30.0, 5.0], [50.0, 20.0, 5.0]])
    r = gaussian((2, 4, 4), 3, coordinates=coords, grid_mode=3)
    assert torch.allclose(r.mu, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    r1 = gaussian((2, 4, 4), 3, coordinates=coords, grid_mode=1)
    assert r1.mu.shape == (3, 2) and (r1.mu.abs() <= 1).all()
    with pytest.warns(UserWarning, match="coordinates missing or constant"):
        r0 = gaussian((2, 4, 4), 3, coordinates=np.zeros((3, 3)), grid_mode=1)
    assert r0.grid_mode == 0


def test_factorized_readout_by_hand_and_shift_sign():
    torch.manual_seed(0)
    c, h, w, n = 2, 4, 5, 3
    r = factorized((c, h, w), n, bias_mode=1).eval()
    feats = torch.randn(1, c, 2, h, w)
    y = r(feats)
    m, f = r.mask.detach(), r.features.detach()
    by_hand = torch.einsum("bcthw,nhw,nc->bnt", feats, m, f) + r.bias.detach()[None, :, None]
    assert torch.allclose(y, by_hand, atol=1e-6)
    # a shift of one pixel to the right (grid units 2/(w-1)) reads the next column
    shift = torch.zeros(1, 2, 2)
    shift[..., 0] = 2 / (w - 1)
    moved = FactorizedReadout.shift_features(feats[:, :, 0], shift[:, 0])
    assert torch.allclose(moved[..., :-1], feats[:, :, 0, :, 1:], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# shifter, registry, pretrained weights, summary, config
# ----------------------------------------------------------------------------------------------


def test_shifter_modes_and_shapes():
    behavior, pupil = torch.randn(3, 2, 7), torch.randn(3, 2, 7)
    s1 = MLPShifter(ShifterOptions(shifter_mode=1, shifter_size=5, shifter_layers=3))
    s2 = MLPShifter(ShifterOptions(shifter_mode=2, shifter_size=5, shifter_layers=3))
    assert s1(None, pupil).shape == (3, 7, 2)
    out = s2(behavior, pupil)
    assert out.shape == (3, 7, 2) and (out.abs() < 1).all()
    assert s2.mlp[0].in_features == 4 and s1.mlp[0].in_features == 2
    frame0 = s1(None, pupil[..., :1])[:, 0]
    assert torch.allclose(frame0, s1(None, pupil)[:, 0])  # per frame
    with pytest.raises(ConfigError, match="--shifter_mode"):
        MLPShifter(ShifterOptions(shifter_mode=0))
    with pytest.raises(ConfigError, match="--shifter_layers"):
        ShifterOptions(shifter_layers=0)


def test_shifter_starts_without_a_shift_and_learns_one():
    torch.manual_seed(0)
    shifter = MLPShifter(ShifterOptions(shifter_mode=1, shifter_size=5, shifter_layers=3))
    pupil = torch.randn(4, 2, 9)
    assert torch.equal(shifter(None, pupil), torch.zeros(4, 9, 2))
    target = 0.3 * pupil.transpose(1, 2)  # a linear gaze -> shift map
    optimizer = torch.optim.Adam(shifter.parameters(), lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        loss = ((shifter(None, pupil) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * (target**2).mean().item()


@dataclasses.dataclass
class ScaleOptions(CoreOptions):
    core_test_scale: float = option(1.0, "initial scale")


def test_registry_adds_a_core_with_its_options():
    name = "_test_identity_core"
    if name not in CORES:

        @CORES.register(name, options=ScaleOptions)
        class IdentityCore(Core):
            def __init__(self, in_channels, frame_shape, options):
                super().__init__(options)
                self.scale = torch.nn.Parameter(torch.tensor(options.core_test_scale))
                self.out_channels = in_channels

            def out_shape(self, frame_shape):
                return frame_shape

            def forward(self, video, behavior=None, pupil_center=None):
                return video * self.scale

    model = build(make_config(name, "gaussian", 0, core_test_scale=2.0))
    assert model.core.scale.item() == 2.0 and model.core.registered_name == name
    video, behavior, pupil = make_inputs()
    assert model(video, "mouse_a", behavior, pupil).shape == (2, 7, 8)
    assert CORES.owners("core_test_scale") == [name]
    assert "core_test_scale" in {f.name for f in flags()}  # its flag, made from the options
    with pytest.raises(ConfigError, match="unknown core"):
        build(make_config("no_such_core"))
    with pytest.raises(ValueError, match="registered twice"):
        CORES.register("vivit")(type("Other", (), {}))
    with pytest.raises(ValueError, match="give each part its own class"):
        CORES.register("_test_other_core", options=ScaleOptions)(type("Other", (), {}))


def test_pretrained_core_loads_local_weights(tmp_path):
    torch.manual_seed(0)
    stack = FrozenConvStack(1, [4, 6], [3, 5])
    with torch.no_grad():
        stack.layers[0].norm.running_mean.uniform_()
    path = tmp_path / "stack.pt"
    torch.save(stack.state_dict(), path)
    cfg = make_config("pretrained", "gaussian", 0, core_weights=str(path))
    model = build(cfg)
    loaded = model.core.backbone
    assert loaded.out_channels == 6
    for k, v in stack.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    model.train()
    assert not loaded.training and model.core.adapter.training
    # gradients reach the video through the frozen network (for MEIs)
    video, behavior, pupil = make_inputs()
    video.requires_grad_(True)
    model(video, "mouse_a", behavior, pupil).sum().backward()
    assert video.grad is not None and torch.any(video.grad != 0)

    cfg.core.core_weights = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="missing.pt"):
        build(cfg)
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(3)}, bad)
    cfg.core.core_weights = str(bad)
    with pytest.raises(ConfigError, match="layers.<i>.conv.weight"):
        build(cfg)


def test_summary_and_parameter_counts():
    model = build(make_config("conv3d", "gaussian", 1))
    counts = parameter_counts(model)
    assert counts["core"] == sum(p.numel() for p in model.core.parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["shifters"] > 0
    line = summary(model)
    assert "\n" not in line and "conv3d" in line and "2 sessions" in line


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build(make_config("vivit", "gaussian", 1, **NO_DROPOUT), make_specs((("m", 4),)))
    model.train()
    with torch.no_grad():
        model.readouts["m"].sigma.zero_()  # no sampling noise: the two passes must agree
    video, behavior, pupil = make_inputs(b=1, t=5)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(flag)
        model(video, "m", behavior, pupil).sum().backward()
        grads.append([p.grad.clone() for p in model.core.parameters()])
    assert model.core.spatial.grad_checkpointing
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_model_config_flags_follow_viv1t_names():
    names = {f.name for f in flags()}
    for flag in (
        "core",
        "readout",
        "core_behavior_mode",
        "core_spatial_patch_size",
        "core_temporal_patch_size",
        "core_use_causal_attention",
        "core_parallel_attention",
        "core_norm_qk",
        "core_reg_tokens",
        "readout_grid_mode",
        "readout_bias_mode",
        "shifter_mode",
        "shifter_size",
    ):
        assert flag in names


def test_readout_input_checks():
    r = gaussian((2, 3, 3), 2, grid_mode=0, bias_mode=2, bias_init=torch.ones(2))
    assert torch.equal(r.bias.detach(), torch.ones(2))
    with pytest.raises(ValueError, match="expected 2"):
        gaussian((2, 3, 3), 2, grid_mode=0, bias_mode=2, bias_init=torch.ones(3))
    assert gaussian((2, 3, 3), 2, grid_mode=0, bias_mode=0).bias is None
    x = torch.randn(1, 2, 2, 3, 3)
    assert r(x).shape == (1, 2, 2)
