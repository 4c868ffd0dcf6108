"""conv_gru: the Sensorium 2023 GRU baseline: a 2D CNN applied to every frame, then a
convolutional GRU over the frames (neuralpredictors' Stacked2dCore and GRU_Module as
sensorium_2023's make_video_model joins them; written anew from their code).

- 2D stack (per frame): layer 1: Conv2d(input kernel, no padding unless core_pad_input, no
  bias), BN, ELU; later layers: Conv2d(hidden kernel, 'same' padding, bias), BN, ELU; the last
  layer has no ELU (final_nonlinearity=False). BN momentum core_bn_momentum (neuralpredictors
  passes 0.9 to torch's BatchNorm2d).
- ConvGRU: h_t = (1 - z) h_{t-1} + z tanh(W x_t + U (r h_{t-1})), z and r sigmoids of
  convolutions of x_t (input kernel) and h_{t-1} (recurrent kernel), 'same' padding, h_0 = 0;
  the core outputs h_t at every frame. Causal: an output depends on frames up to its own (in
  eval mode; training batch norm pools statistics over the clip, as any batch-norm network).
- Regularisers (the core's `regularizer()`): core_gamma_input x Laplace-L2 of the first
  layer's kernels (LaplaceL2norm: sum over kernels of |3x3 Laplacian * w|^2 / sum |w|^2,
  Laplacian padded by 1), core_gamma_hidden x group sparsity of the later layers (the mean
  over (out, in) pairs of the L2 norm of each kernel, averaged over layers).
Weights: Xavier normal, biases 0 (neuralpredictors' init_conv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.cores.base import Core, behavior_channels, concat_behavior
from neurotwin.models.cores.conv2d import ConvStackOptions
from neurotwin.models.frames import fold_time, unfold_time
from neurotwin.registry import CORES

LAPLACE_3X3 = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))


@dataclass
class ConvGRUOptions(ConvStackOptions):
    """conv_gru (defaults: sensorium_2023's 2D-core GRU model, models_demo.ipynb)."""

    core_behavior_mode: Literal[0, 1, 2] = option(
        1, "0: no behaviour, 1: behaviour as input channels (the baseline's 3 input channels), "
        "2: behaviour and pupil centre"
    )  # fmt: skip
    core_num_layers: int = option(4, "layers of the 2D stack")
    core_hidden_dim: int = option(64, "channels of each layer of the 2D stack")
    core_spatial_input_kernel: int = option(9, "kernel of the first 2D layer")
    core_spatial_hidden_kernel: int = option(7, "kernel of later 2D layers")
    core_pad_input: bool = option(False, "pad the first 2D layer (false: frames shrink by k - 1)")
    core_bn_momentum: float = option(0.9, "momentum of the batch norms (torch's convention)")
    core_gru_channels: int = option(64, "channels of the GRU state (the readout's input)")
    core_gru_input_kernel: int = option(7, "GRU: kernel of the convolutions of the input")
    core_gru_rec_kernel: int = option(7, "GRU: kernel of the convolutions of the state")
    core_gamma_input: float = option(500.0, "weight of the Laplace-L2 penalty of the input kernels")
    core_gamma_hidden: float = option(500000.0, "weight of the group sparsity of the later layers")

    def check(self) -> None:
        super().check()
        for name in ("core_gru_channels", "core_gru_input_kernel", "core_gru_rec_kernel"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("core_gamma_input", "core_gamma_hidden"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(0 < self.core_bn_momentum <= 1, "core_bn_momentum", "must be in (0, 1]")


def laplace_l2(weight: torch.Tensor) -> torch.Tensor:
    """neuralpredictors' LaplaceL2norm (avg=False) of conv kernels (out, in, k, k)."""
    o, i, kh, kw = weight.shape
    w = weight.reshape(o * i, 1, kh, kw)
    laplace = torch.tensor(LAPLACE_3X3, dtype=w.dtype, device=w.device)[None, None]
    return F.conv2d(w, laplace, padding=1).pow(2).sum() / w.pow(2).sum()


def group_sparsity(weights: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean L2 norm of each (out, in) kernel."""
    norms = [w.pow(2).sum((2, 3)).sqrt().mean() for w in weights]
    return torch.stack(norms).mean()


class ConvGRUCell(nn.Module):
    """One step of the convolutional GRU: (x_t, h_{t-1}) -> h_t."""

    def __init__(self, c_in: int, channels: int, input_kernel: int, rec_kernel: int) -> None:
        super().__init__()
        # the input and state convolutions of the update, reset and output gates
        self.input_gates = nn.Conv2d(c_in, 3 * channels, input_kernel, padding=input_kernel // 2)
        self.state_gates = nn.Conv2d(channels, 2 * channels, rec_kernel, padding=rec_kernel // 2)
        self.state_out = nn.Conv2d(channels, channels, rec_kernel, padding=rec_kernel // 2)
        self.channels = channels

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xu, xr, xo = self.input_gates(x).chunk(3, dim=1)
        hu, hr = self.state_gates(h).chunk(2, dim=1)
        update, reset = torch.sigmoid(xu + hu), torch.sigmoid(xr + hr)
        candidate = torch.tanh(xo + self.state_out(h * reset))
        return torch.lerp(h, candidate, update)  # (1 - z) h + z candidate


@CORES.register("conv_gru", options=ConvGRUOptions)
class ConvGRUCore(Core):
    """Per-frame 2D CNN, then a convolutional GRU over time (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        frame_shape: tuple[int, int] | None = None,
        options: ConvGRUOptions | None = None,
    ) -> None:
        o = options or ConvGRUOptions()
        super().__init__(o)
        c = in_channels + behavior_channels(o.core_behavior_mode)
        layers = []
        for i in range(o.core_num_layers):
            first = i == 0
            k = o.core_spatial_input_kernel if first else o.core_spatial_hidden_kernel
            pad = k // 2 if (o.core_pad_input or not first) else 0
            parts = [
                nn.Conv2d(c, o.core_hidden_dim, k, padding=pad, bias=not first),
                nn.BatchNorm2d(o.core_hidden_dim, momentum=o.core_bn_momentum),
            ]
            if i < o.core_num_layers - 1:
                parts.append(nn.ELU())
            layers.append(nn.Sequential(*parts))
            c = o.core_hidden_dim
        self.stack = nn.Sequential(*layers)
        self.cell = ConvGRUCell(c, o.core_gru_channels, o.core_gru_input_kernel, o.core_gru_rec_kernel)  # fmt: skip
        self.shrink = 0 if o.core_pad_input else o.core_spatial_input_kernel - 1
        self.out_channels = o.core_gru_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # each gate's kernels as its own convolution's
                gates = m.out_channels // (o.core_gru_channels if m in self.cell.children() else m.out_channels)  # fmt: skip
                for w in m.weight.data.chunk(gates, dim=0):
                    nn.init.xavier_normal_(w)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        h, w = frame_shape[0] - self.shrink, frame_shape[1] - self.shrink
        if h < 1 or w < 1:
            raise ValueError(f"frames of {tuple(frame_shape)} are smaller than the input kernel")
        return (h, w)

    def regularizer(self) -> torch.Tensor:
        o = self.options
        reg = o.core_gamma_input * laplace_l2(self.stack[0][0].weight)
        if len(self.stack) > 1:
            reg = reg + o.core_gamma_hidden * group_sparsity([m[0].weight for m in self.stack[1:]])
        return reg

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the 2D stack and the GRU step (not the loop over frames, which
        compiling would unroll)."""
        self.stack.compile(*args, **kwargs)
        self.cell.compile(*args, **kwargs)

    def forward(self, video, behavior=None, pupil_center=None):
        x = concat_behavior(video, behavior, pupil_center, self.options.core_behavior_mode)
        b, t = x.shape[0], x.shape[2]
        x = unfold_time(self.stack(fold_time(x)), b)  # (B, C, T, h, w)
        h = x.new_zeros(b, self.out_channels, *x.shape[3:])
        states = []
        for i in range(t):
            h = self.cell(x[:, :, i], h)
            states.append(h)
        return torch.stack(states, dim=2)
