"""Backbones: every source with random weights (CPU), input preparation, layers, pooling, weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotwin.errors import CheckpointError, ConfigError
from neurotwin.models.backbones import build_backbone, options_for, parse_spec
from neurotwin.models.backbones.mouse_vision_archs import ARCHITECTURES

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = torch.rand(3, 1, 36, 64, generator=torch.Generator().manual_seed(0)) * 255


def test_spec_parsing_and_unknown_names():
    assert parse_spec("torchvision:resnet18") == ("torchvision", "resnet18")
    assert parse_spec("pixels") == ("pixels", "")
    with pytest.raises(ConfigError, match="SOURCE:NAME"):
        parse_spec("caffe:alexnet")
    with pytest.raises(ConfigError, match="has no model"):
        build_backbone("torchvision:resnet999")
    with pytest.raises(ConfigError, match="pooling"):
        options_for("pixels", {"pooling": "max"})


def test_pixels_are_block_averages_of_the_frames():
    frames = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(2, 1, 4, 8)
    backbone = build_backbone("pixels", {"pixels_size": [2, 4], "pixel_range": [0, 64]})
    out = backbone(frames)["pixels"]
    expected = frames.reshape(2, 2, 2, 4, 2).mean(dim=(2, 4)).reshape(2, -1) / 64
    torch.testing.assert_close(out, expected)
    assert backbone(frames).keys() == {"pixels"}
    maps = build_backbone("pixels", {"pixels_size": [2, 4], "pooling": "none"})(frames)["pixels"]
    assert maps.shape == (2, 1, 2, 4)


def test_torchvision_layers_pooling_and_input_preparation():
    opts = {
        "layers": ["layer1", "layer3"],
        "input_size": [32, 32],
        "pooling": "none",
        "resize": "stretch",
    }
    backbone = build_backbone("torchvision:resnet18", opts)
    maps = backbone(FRAMES)
    assert maps["layer1"].shape == (3, 64, 8, 8) and maps["layer3"].shape == (3, 256, 2, 2)
    # the frames as the network sees them: grey repeated to RGB, stretched, ImageNet-normalised
    x = backbone.prepare(FRAMES)
    manual = torch.nn.functional.interpolate(
        (FRAMES / 255).expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", antialias=True
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (manual - mean) / std)
    pooled = {
        p: build_backbone("torchvision:resnet18", {**opts, "pooling": p, "avgpool_size": 2})(FRAMES)
        for p in ("mean", "avgpool", "flatten")
    }
    torch.testing.assert_close(pooled["mean"]["layer3"], maps["layer3"].mean(dim=(2, 3)))
    torch.testing.assert_close(pooled["flatten"]["layer1"], maps["layer1"].flatten(1))
    assert pooled["avgpool"]["layer1"].shape == (3, 64 * 4)
    torch.testing.assert_close(pooled["avgpool"]["layer3"], maps["layer3"].flatten(1))  # 2x2 map
    with pytest.raises(ConfigError, match="cls"):
        build_backbone("torchvision:resnet18", {**opts, "pooling": "cls"})(FRAMES)
    with pytest.raises(ConfigError, match="pooler"):
        build_backbone("torchvision:resnet18", {**opts, "pooling": "pooler"})


def test_torchvision_own_transform_crops_the_centre():
    backbone = build_backbone("torchvision:resnet18")
    assert backbone.spec.resize_short == 256 and backbone.spec.crop == (224, 224)
    assert backbone.layers == ["layer1", "layer2", "layer3", "layer4"]
    assert backbone.prepare(FRAMES[:1]).shape == (1, 3, 224, 224)
    # a smaller input keeps the transform: shorter side to 32 * 256/224, then the centre 32x32
    small = build_backbone("torchvision:resnet18", {"input_size": [32, 32]})
    assert (small.spec.resize_short, small.spec.crop) == (36, (32, 32))
    x = torch.arange(36 * 64, dtype=torch.float32).reshape(1, 1, 36, 64)
    centre = small.prepare(x)[0, 0] * 0.229 + 0.485  # back to [0, 1] / 255 units
    torch.testing.assert_close(centre * 255, x[0, 0, 2:34, 16:48], atol=1e-3, rtol=0)


def test_several_layers_at_once_equal_one_at_a_time_and_unknown_layers_are_named():
    opts = {"input_size": [32, 32], "pooling": "mean"}
    both = build_backbone("torchvision:resnet18", {**opts, "layers": ["layer2", "layer4"]})(FRAMES)
    for layer in ("layer2", "layer4"):
        alone = build_backbone("torchvision:resnet18", {**opts, "layers": [layer]})(FRAMES)
        torch.testing.assert_close(alone[layer], both[layer])
    with pytest.raises(ConfigError, match="unknown layer.*layer9.*layer1"):
        build_backbone("torchvision:resnet18", {**opts, "layers": ["layer9"]})


def test_random_weights_are_seeded_and_weights_files_load(tmp_path):
    opts = {"input_size": [32, 32], "pooling": "mean", "layers": ["layer4"]}
    a = build_backbone("torchvision:resnet18", opts)
    b = build_backbone("torchvision:resnet18", opts)
    c = build_backbone("torchvision:resnet18", {**opts, "seed": 1})
    torch.testing.assert_close(a(FRAMES)["layer4"], b(FRAMES)["layer4"])
    assert not torch.allclose(a(FRAMES)["layer4"], c(FRAMES)["layer4"])
    # a training checkpoint: weights under 'state_dict' with DataParallel's 'module.' prefix
    state = {f"module.{k}": v for k, v in c.network.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "ckpt.pt")
    loaded = build_backbone("torchvision:resnet18", {**opts, "weights": str(tmp_path / "ckpt.pt")})
    torch.testing.assert_close(loaded(FRAMES)["layer4"], c(FRAMES)["layer4"])
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        build_backbone("torchvision:resnet18", {**opts, "weights": str(tmp_path / "wrong.pt")})
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone("torchvision:resnet18", {**opts, "weights": str(tmp_path / "none.pt")})


def test_cache_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        build_backbone("torchvision:resnet18", {"weights": "cache"})


def test_timm_feature_info_layers_pre_logits_and_vit_token_grids():
    opts = {"input_size": [32, 32], "pooling": "mean"}
    backbone = build_backbone("timm:resnet18", opts)
    assert backbone.layers == ["act1", "layer1", "layer2", "layer3", "layer4"]
    out = backbone(FRAMES)
    assert out["layer4"].shape == (3, 512)
    assert build_backbone("timm:resnet18", {**opts, "pooling": "pooler"})(FRAMES)[
        "pooler"
    ].shape == (3, 512)
    vit = build_backbone("timm:vit_tiny_patch16_224", {"layers": ["blocks.11"], "pooling": "none"})
    grid = vit(FRAMES[:1])["blocks.11"]
    assert grid.shape == (1, 192, 14, 14)  # 196 patch tokens, the class token left aside
    cls = build_backbone("timm:vit_tiny_patch16_224", {"layers": ["blocks.11"], "pooling": "cls"})
    assert cls(FRAMES[:1])["blocks.11"].shape == (1, 192)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A transformers ViT (config + image processor) in a local folder, as from_pretrained reads."""
    from transformers import ViTConfig, ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit")
    ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    ).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


def test_hf_pooler_cls_tokens_and_hidden_states(tiny_vit):
    spec = f"hf:{tiny_vit}"
    assert build_backbone(spec, {"pooling": "pooler"})(FRAMES)["pooler"].shape == (3, 32)
    out = build_backbone(
        spec, {"pooling": "cls", "layers": ["hidden_states.1", "last_hidden_state"]}
    )(FRAMES)
    assert out["hidden_states.1"].shape == (3, 32) and out["last_hidden_state"].shape == (3, 32)
    grid = build_backbone(spec, {"pooling": "none"})(FRAMES)["last_hidden_state"]
    assert grid.shape == (3, 32, 4, 4)
    mean = build_backbone(spec, {"pooling": "mean"})(FRAMES)["last_hidden_state"]
    torch.testing.assert_close(mean, grid.mean(dim=(2, 3)))
    with pytest.raises(ConfigError, match="no model config"):
        build_backbone(f"hf:{tiny_vit}/missing")


def test_hf_inputs_match_the_image_processor(tiny_vit):
    """The torch preparation gives what AutoImageProcessor gives (to one grey level, 1/127.5)."""
    from transformers import AutoImageProcessor, ConvNextImageProcessor

    frames = (np.random.default_rng(0).random((4, 36, 64)) * 255).astype(np.uint8)
    rgb = list(np.repeat(frames[:, None], 3, axis=1))
    backbone = build_backbone(f"hf:{tiny_vit}", {"pooling": "cls"})
    ref = AutoImageProcessor.from_pretrained(tiny_vit)(images=rgb, return_tensors="pt")[
        "pixel_values"
    ]
    mine = backbone.prepare(torch.tensor(frames[:, None], dtype=torch.float32))
    assert mine.shape == ref.shape
    assert float((mine - ref).abs().max()) < 0.01
    # ConvNeXt's processor: shortest edge / crop_pct, then a centre crop
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(tiny_vit)
    ref = AutoImageProcessor.from_pretrained(tiny_vit)(images=rgb, return_tensors="pt")[
        "pixel_values"
    ]
    mine = build_backbone(f"hf:{tiny_vit}", {"pooling": "cls"}).prepare(
        torch.tensor(frames[:, None], dtype=torch.float32)
    )
    assert float((mine - ref).abs().max()) < 0.01


# Parameter + buffer counts of mouse-vision's own models (its alexnet.py and
# parallel_stream_mousenet.py at commit 5c1e85d, built with pretrained=False and counted with
# sum(v.numel() for v in model.state_dict().values())); our rebuilds give the same state-dict
# keys in the same order, and the same outputs with the same weights.
MOUSE_VISION_SIZES = {
    "alexnet_bn_ir": 57041223,
    "alexnet_bn": 61138223,
    "alexnet_ir": 57003840,
    "alexnet": 61100840,
    "dual_stream_ir": 5812363,
    "six_stream_simclr": 16795035,
}


@pytest.mark.parametrize("name", sorted(MOUSE_VISION_SIZES))
def test_mouse_vision_architectures(name):
    net = ARCHITECTURES[name][0]()
    assert sum(v.numel() for v in net.state_dict().values()) == MOUSE_VISION_SIZES[name]
    backbone = build_backbone(f"mouse-vision:{name}", {"pooling": "flatten"})
    assert backbone.prepare(FRAMES[:1]).shape == (1, 3, 64, 64)  # its 64x64 evaluation transform
    out = backbone(FRAMES[:2])
    assert list(out) == ARCHITECTURES[name][1]
    assert all(v.shape[0] == 2 and torch.isfinite(v).all() for v in out.values())


def test_mouse_vision_checkpoint_format_and_long_names(tmp_path):
    net = ARCHITECTURES["dual_stream_ir"][0]()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    state = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save(
        {"state_dict": state, "epoch": 30, "optimizer": {"lr": 0.1}}, tmp_path / "dual_stream_ir.pt"
    )
    opts = {
        "weights": str(tmp_path / "dual_stream_ir.pt"),
        "layers": ["VISam"],
        "pooling": "flatten",
    }
    backbone = build_backbone("mouse-vision:simplified_mousenet_dual_stream_visp_3x3_ir", opts)
    x = backbone.prepare(FRAMES[:2])
    captured = {}
    net.eval().VISam.register_forward_hook(lambda m, i, o: captured.update(v=o))
    with torch.no_grad():
        net(x)
    torch.testing.assert_close(backbone(FRAMES[:2])["VISam"], captured["v"].flatten(1))
    with pytest.raises(ConfigError, match="no weights cache"):
        build_backbone("mouse-vision:alexnet_bn_ir", {"weights": "cache"})
