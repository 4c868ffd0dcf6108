"""The published architectures of mouse-vision (Nayebi, Kong et al. 2023, neuroailab/mouse-vision),
rebuilt with the same module names, so that its checkpoints load as they are.

- AlexNet and AlexNet-BN (`mouse_vision/models/imagenet_models/alexnet.py`): conv stacks in
  `features` (a Sequential: conv [bn] relu pool ...), `avgpool` (adaptive, 6x6), `classifier`;
  the instance-recognition variants drop the last linear layer (`drop_final_fc`).
- The parallel-stream MouseNets (`parallel_stream_mousenet.py`): a graph of blocks named by
  their connection ("input_VISp", "VISp_dorsal", "dorsal_VISam", ...) in `model_layers`; an
  area's activity is the sum of the blocks that end in it. Here every area also has an
  identity module of its name (VISp, dorsal, ...; no parameters) so that a forward hook reads
  it by name, as mouse-vision's feature extractor reads `model.layers[area]`.

Shi et al.'s MouseNet (`shi_mousenet.py`) is not rebuilt: its ~60 connections carry
connectome-derived kernel sizes and Gaussian connection masks from a parameter table that
would have to be copied line by line.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(c_in, c_out, k, stride=1, pad=0, bn=False, pool=False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=k, stride=stride, padding=pad)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=False))
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
    return layers


class AlexNet(nn.Module):
    """AlexNet ("one weird trick" widths 64-192-384-256-256), with or without batch norm."""

    def __init__(
        self, batch_norm: bool, pool_size: int = 6, drop_final_fc: bool = False, classes: int = 1000
    ) -> None:
        super().__init__()
        bn = batch_norm
        self.features = nn.Sequential(
            *_conv_block(3, 64, 11, 4, 2, bn, pool=True),
            *_conv_block(64, 192, 5, 1, 2, bn, pool=True),
            *_conv_block(192, 384, 3, 1, 1, bn),
            *_conv_block(384, 256, 3, 1, 1, bn),
            *_conv_block(256, 256, 3, 1, 1, bn, pool=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        head: list[nn.Module] = [nn.Dropout(), nn.Linear(256 * pool_size * pool_size, 4096)]
        if bn:
            head.append(nn.BatchNorm1d(4096))
        head += [nn.ReLU(inplace=False), nn.Dropout(), nn.Linear(4096, 4096)]
        if bn:
            head.append(nn.BatchNorm1d(4096))
        head.append(nn.ReLU(inplace=False))
        if not drop_final_fc:
            head.append(nn.Linear(4096, classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class ParallelStreamMouseNet(nn.Module):
    """VISp -> parallel streams -> VISpor and VISam (each stream also skips from VISp).

    `streams`: the intermediate areas (["ventral", "dorsal"]: dual stream; the six lateral
    areas: six stream). `visp_3x3`: VISp reaches VISpor/VISam through a 3x3 stride-2 conv
    (else a 1x1 conv and max-pool). Output areas VISpor and VISam are concatenated, pooled to
    6x6 and flattened (the instance-recognition / SimCLR variants have no classifier).
    """

    OUTPUT_AREAS = ("VISpor", "VISam")

    def __init__(self, streams: list[str], visp_3x3: bool, batch_norm: bool, pool_size: int = 6):
        super().__init__()
        bn = batch_norm
        self.connections = ["input_VISp", *[f"VISp_{s}" for s in streams]]
        self.connections += [f"VISp_{a}" for a in self.OUTPUT_AREAS]
        for s in streams:
            self.connections += [f"{s}_VISam", f"{s}_VISpor"]
        self.model_layers = nn.ModuleDict()
        for conn in self.connections:
            source, target = conn.split("_")
            if source == "input":
                block = _conv_block(3, 64, 11, 4, 2, bn, pool=True)
            elif source == "VISp" and target in self.OUTPUT_AREAS:
                block = (
                    _conv_block(64, 256, 3, 2, 0, bn)
                    if visp_3x3
                    else _conv_block(64, 256, 1, 1, 0, bn, pool=True)
                )
            elif target in self.OUTPUT_AREAS:
                block = _conv_block(384, 256, 3, 1, 1, bn)
            else:
                block = _conv_block(64, 192, 5, 1, 2, bn, pool=True) + _conv_block(
                    192, 384, 3, 1, 1, bn
                )
            self.model_layers[conn] = nn.Sequential(*block)
        self.areas = ["VISp", *streams, *self.OUTPUT_AREAS]
        for area in self.areas:
            self.add_module(area, nn.Identity())
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))

    def forward(self, x):
        activity = {"input": x}
        pending: dict[str, object] = {}
        for conn in self.connections:
            source, target = conn.split("_")
            if source not in activity:
                activity[source] = getattr(self, source)(pending.pop(source))
            out = self.model_layers[conn](activity[source])
            pending[target] = out if target not in pending else pending[target] + out
        for area in self.OUTPUT_AREAS:
            activity[area] = getattr(self, area)(pending.pop(area))
        out = torch.cat([activity[a] for a in self.OUTPUT_AREAS], dim=1)
        return self.avgpool(out).flatten(1)


SIX_STREAMS = ["VISl", "VISrl", "VISal", "VISli", "VISpm", "VISpl"]
ALEXNET_LAYERS = ["features.2", "features.5", "features.7", "features.9", "features.12"]
ALEXNET_LAYERS += ["classifier.2", "classifier.5"]
ALEXNET_BN_LAYERS = ["features.3", "features.7", "features.10", "features.13", "features.17"]
ALEXNET_BN_LAYERS += ["classifier.3", "classifier.7"]

# name -> (builder, mouse-vision's layers (model_layers.py), mouse-vision's own name)
ARCHITECTURES = {
    "alexnet_bn_ir": (
        lambda: AlexNet(batch_norm=True, drop_final_fc=True),
        ALEXNET_BN_LAYERS,
        "alexnet_bn_ir_64x64_input_pool_6",
    ),
    "alexnet_bn": (lambda: AlexNet(batch_norm=True), ALEXNET_BN_LAYERS, "alexnet_bn"),
    "alexnet_ir": (
        lambda: AlexNet(batch_norm=False, drop_final_fc=True),
        ALEXNET_LAYERS,
        "alexnet_ir_64x64_input_pool_6",
    ),
    "alexnet": (lambda: AlexNet(batch_norm=False), ALEXNET_LAYERS, "alexnet_64x64_input_pool_6"),
    "dual_stream_ir": (
        lambda: ParallelStreamMouseNet(["ventral", "dorsal"], visp_3x3=True, batch_norm=True),
        ["VISp", "ventral", "dorsal", "VISpor", "VISam"],
        "simplified_mousenet_dual_stream_visp_3x3_ir",
    ),
    "six_stream_simclr": (
        lambda: ParallelStreamMouseNet(SIX_STREAMS, visp_3x3=True, batch_norm=True),
        ["VISp", "VISal", "VISli", "VISl", "VISrl", "VISpl", "VISpm", "VISpor", "VISam"],
        "simplified_mousenet_six_stream_visp_3x3_simclr",
    ),
}
ALIASES = {v[2]: k for k, v in ARCHITECTURES.items()}
