"""The pretrained core on a real network (torchvision's resnet18, random weights: nothing is
downloaded): feature maps of a layer against the network run by hand on frames mapped back from
the data's standardised units, frozen unless fine-tuned, gradients to the input, the options
and their legacy name, and a model trained by train.py and scored by predict.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurotwin import config as cfg
from neurotwin.cli import predict as predict_cli
from neurotwin.cli import train as train_cli
from neurotwin.data import loaders, native
from neurotwin.errors import ConfigError
from neurotwin.models.backbones import build_backbone
from neurotwin.models.cores.base import VideoInput
from neurotwin.models.cores.pretrained import PretrainedCore, PretrainedOptions
from neurotwin.models.model import build_model, video_input
from neurotwin.registry import CORES

pytest.importorskip("torchvision")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:core 'pretrained'.*random weights:UserWarning"),
]

FRAME = (9, 16)
RESNET = dict(
    core_backbone="torchvision:resnet18",
    core_layer="layer1",
    core_weights="none",
    core_input_size=[32, 32],
    core_hidden_dim=4,
)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def resnet_core(video: VideoInput | None = None, **values) -> PretrainedCore:
    video = video or VideoInput((-1.5, 2.0))
    return PretrainedCore(1, FRAME, PretrainedOptions(**{**RESNET, **values}), video=video)


def test_feature_maps_are_the_network_layer_on_frames_mapped_back_to_pixels():
    """The core's maps are resnet18's layer1 on the frames taken from the core's units back to
    [0, 1] by the video's black and white, stretched to 32x32, repeated to RGB and ImageNet-
    normalised; the maps are (64, 8, 8) (layer1 is 1/4 of the input), so are out_shape and the
    adapter's input (64 + 4 behaviour channels). Float32: max error 1e-5."""
    import torchvision

    lo, hi = -1.5, 2.0
    core = resnet_core(VideoInput((lo, hi))).eval()
    assert core.out_shape(FRAME) == (8, 8) and core.out_channels == 4
    assert core.adapter[0].in_channels == 64 + 4
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()  # the backbone's seed is 0
    frames = lo + (hi - lo) * torch.rand(6, 1, *FRAME)
    x = F.interpolate((frames - lo) / (hi - lo), size=(32, 32), mode="bilinear", antialias=True)
    x = (x.expand(-1, 3, -1, -1) - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        want = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        got = core._maps(frames)
    assert got.shape == (6, 64, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the core's output: (B, hidden, T, h, w)
    video = torch.randn(2, 1, 3, *FRAME)
    beh, pupil = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    assert core(video, beh, pupil).shape == (2, 4, 3, 8, 8)


def test_frozen_network_passes_gradients_to_the_input_and_fine_tunes_on_request():
    """Frozen: no network parameter needs or gets a gradient, batch norm stays in eval with
    its statistics, yet the video gets a gradient (MEIs). set_fine_tuning(True): every network
    weight up to the layer gets one (later layers never run: they stay frozen); batch norm
    still in eval."""
    core = resnet_core().train()
    network = core.backbone.network
    assert not network.training and core.adapter.training
    assert not any(p.requires_grad for p in network.parameters())
    running = network.bn1.running_mean.clone()
    video = torch.randn(1, 1, 2, *FRAME, requires_grad=True)
    beh, pupil = torch.randn(1, 2, 2), torch.randn(1, 2, 2)
    core(video, beh, pupil).square().sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert all(p.grad is None for p in network.parameters())
    assert torch.equal(network.bn1.running_mean, running)
    assert core.adapter[0].weight.grad is not None

    core.set_fine_tuning(True)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert {"conv1.weight", "bn1.bias", "layer1.1.conv2.weight"} <= trainable
    assert not any(n.startswith(("layer2", "layer4", "fc")) for n in trainable)  # never run
    core.train()
    core(torch.randn(1, 1, 2, *FRAME), beh, pupil).square().sum().backward()
    used = [p for n, p in network.named_parameters() if n.startswith(("conv1", "bn1", "layer1"))]
    assert used and all(p.grad is not None and p.grad.abs().sum() > 0 for p in used)
    assert not network.training and torch.equal(network.bn1.running_mean, running)


def test_the_video_range_comes_from_the_data_transform(synthetic_mice):
    """session_specs gives each session black and white in its standardised units,
    ((0 - mean) / std, (255 - mean) / std) of its video statistics; build_model averages them
    over sessions into the backbone's pixel range."""
    data = cfg.DataConfig(data_dir=str(synthetic_mice), num_workers=0)
    specs = loaders.session_specs(data)
    for name, spec in specs.items():
        stats = native.NativeSession(synthetic_mice / name).statistics(tier="train")
        mean = float(np.asarray(stats[native.VIDEOS]["mean"]))
        std = float(np.asarray(stats[native.VIDEOS]["std"]))
        assert spec["pixel_range"] == pytest.approx(((0 - mean) / std, (255 - mean) / std))
    want = np.mean([s["pixel_range"] for s in specs.values()], axis=0)
    assert video_input(specs).pixel_range == pytest.approx(tuple(want))
    model_config = cfg.ModelConfig(core=CORES.options("pretrained", **RESNET))
    model = build_model(model_config, specs, frame_shape=FRAME)
    assert model.core.backbone.pixel_range == pytest.approx(tuple(want))
    raw = loaders.session_specs(cfg.DataConfig(data_dir=str(synthetic_mice), transform_input=0))
    assert all(s["pixel_range"] == (0.0, 255.0) for s in raw.values())


def test_options_are_checked_and_the_old_weights_name_is_read():
    """A backbone needs a layer; layer and input size need a backbone; `cache` is for
    backbones. core_pretrained_weights (configs of earlier releases,
    saved or legacy) is read as core_weights."""
    with pytest.raises(ConfigError, match="--core_layer"):
        PretrainedOptions(core_backbone="torchvision:resnet18", core_weights="none")
    with pytest.raises(ConfigError, match="--core_layer: needs core_backbone"):
        PretrainedOptions(core_layer="layer1")
    with pytest.raises(ConfigError, match="--core_weights: cache needs core_backbone"):
        PretrainedOptions(core_weights="cache")
    with pytest.raises(ConfigError, match="feature maps"):
        resnet_core(core_layer="fc")
    old = {"model": {"core": {"name": "pretrained", "core_pretrained_weights": "stack.pt"}}}
    assert cfg.from_dict(old).model.core.core_weights == "stack.pt"
    legacy = {f: None for f in cfg.LEGACY_FIELDS["core"]}
    legacy.update(name="pretrained", core_behavior_mode=2, core_num_layers=2, core_hidden_dim=4,
                  core_spatial_input_kernel=3, core_spatial_hidden_kernel=3,
                  core_pretrained_weights="old.pt")  # fmt: skip
    assert cfg.from_dict({"model": {"core": legacy}}).model.core.core_weights == "old.pt"
    parsed = cfg.parse_config(["--core", "pretrained", *flags(RESNET)])
    assert parsed.model.core.core_input_size == [32, 32]


def flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += [f"--{k}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return out


def train_run(data_dir: Path, out: Path, *extra: str) -> dict:
    argv = ["--data_dir", str(data_dir), "--output_dir", str(out), "--core", "pretrained",
            *flags(RESNET), "--shifter_mode", "0", "--crop_frame", "16", "--batch_size", "4",
            "--num_workers", "0", "--epochs", "2", "--min_epochs", "2", "--device", "cpu",
            "--autocast", "disable", "--verbose", "0", *extra]  # fmt: skip
    train_cli.main(argv)
    return torch.load(out / "checkpoints" / "last.pt", weights_only=False)


def network_state(state: dict) -> dict[str, torch.Tensor]:
    prefix = "core.backbone.network."
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}


def test_train_and_predict_with_a_frozen_resnet18(synthetic_mice, tmp_path):
    """train.py trains the readouts and the adapter for 2 epochs on resnet18's layer1 maps, the
    network's weights (and batch-norm statistics) exactly as built; predict.py scores the run
    (finite correlations, predictions of every trial). With --core_lr the weights change and
    the batch-norm statistics do not."""
    out = tmp_path / "frozen"
    state = train_run(synthetic_mice, out)
    fresh = build_backbone("torchvision:resnet18", {"weights": "none"}).network.state_dict()
    saved = network_state(state)
    assert saved.keys() == fresh.keys()
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)

    assert predict_cli.main(["--output_dir", str(out), "--verbose", "0"]) == 0
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())
    assert math.isfinite(metrics["mean"]["oracle"]["single_trial_correlation"])
    for session in state["sessions"]:
        with np.load(out / "predictions" / session / "oracle.npz") as npz:
            pred, counts = npz["predictions"], npz["frame_counts"]
        assert all(np.isfinite(p[:, :n]).all() for p, n in zip(pred, counts))

    tuned = network_state(train_run(synthetic_mice, tmp_path / "tuned", "--core_lr", "0.01"))
    assert not torch.equal(tuned["conv1.weight"], fresh["conv1.weight"])
    assert not torch.equal(tuned["layer1.0.conv1.weight"], fresh["layer1.0.conv1.weight"])
    assert torch.equal(tuned["bn1.running_mean"], fresh["bn1.running_mean"])
    assert torch.equal(tuned["layer4.1.conv2.weight"], fresh["layer4.1.conv2.weight"])  # unused
