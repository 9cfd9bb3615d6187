"""The hyper-convolutional layer of DnD's decoder.

Input and output are (batch, C, H, W) grids. A layer maps (Ci, Hi, Wi) → (Co, Ho, Wo):
LayerNorm over (H, W); a width-first branch (convolve W→Wo with W as channels, then H→Ho with H as
channels) and a height-first branch (H first, then W, then tanh), averaged with a learned bias;
then a k×k convolution across channels Ci→Co. The only nonlinearities are the tanh and the norm.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, k: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding="same", bias=bias)


class HyperConv3d(nn.Module):
    def __init__(self, shape_in: tuple[int, int, int], shape_out: tuple[int, int, int], kernel: int) -> None:
        super().__init__()
        _, h_in, w_in = shape_in
        _, h_out, w_out = shape_out
        self.norm = nn.LayerNorm([h_in, w_in])
        self.conv1w, self.conv1h = _conv(w_in, w_out, kernel), _conv(h_in, h_out, kernel)
        self.conv2h, self.conv2w = _conv(h_in, h_out, kernel), _conv(w_in, w_out, kernel)
        self.bias = nn.Parameter(torch.zeros(h_out, w_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) → (B, C, Ho, Wo)
        x = self.norm(x)
        # width first: W as channels over the (H, C) grid, then H as channels over (C, Wo)
        a = self.conv1w(x.permute(0, 3, 2, 1))  # (B, Wo, H, C)
        a = self.conv1h(a.permute(0, 2, 3, 1))  # (B, Ho, C, Wo)
        a = a.permute(0, 2, 1, 3)
        # height first: H as channels over (C, W), then W as channels over (Ho, C)
        b = self.conv2h(x.permute(0, 2, 1, 3))  # (B, Ho, C, W)
        b = self.conv2w(b.permute(0, 3, 1, 2))  # (B, Wo, Ho, C)
        b = torch.tanh(b.permute(0, 3, 2, 1))
        return (a + b + self.bias) / 3

    def flops(self, shape_in, shape_out) -> int:
        (c, h, w), (_, ho, wo) = shape_in, shape_out
        k2 = self.conv1w.kernel_size[0] * self.conv1w.kernel_size[1]
        return 2 * k2 * (w * wo * h * c + h * ho * c * wo + h * ho * c * w + w * wo * ho * c)


class HyperConvLayer(nn.Module):
    def __init__(self, shape_in: tuple[int, int, int], shape_out: tuple[int, int, int], kernel: int) -> None:
        super().__init__()
        self.shape_in, self.shape_out = tuple(shape_in), tuple(shape_out)
        self.hyper = HyperConv3d(self.shape_in, self.shape_out, kernel)
        self.linear2 = _conv(self.shape_in[0], self.shape_out[0], kernel, bias=True)
        self.residual = self.shape_in == self.shape_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear2(self.hyper(x))
        return x + y if self.residual else y

    def flops(self) -> int:
        """Forward FLOPs per sample (convolutions; 1 multiply-accumulate = 2 FLOPs)."""
        (c, _, _), (co, ho, wo) = self.shape_in, self.shape_out
        k = self.linear2.kernel_size
        return self.hyper.flops(self.shape_in, self.shape_out) + 2 * c * co * k[0] * k[1] * ho * wo
