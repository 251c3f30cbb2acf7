"""PyTorch oracle of the two reference models, RESNET_2D and RESNET_phase_att.

Written from a description of the reference code's layers and names (not
from its source). Module and attribute names are the reference's state_dict
path segments, registered in the reference's order, so ``state_dict()`` keys
(and their order) match ``state_dict_keys.json``. ``attention`` selects the
reference code's channel-attention semantics or the paper's equations.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTIONS = ("reference", "paper")
# Channels of the six encoder scales (full, /2, ..., /32) in units of nc.
SCALE_MULTIPLIERS = (1, 2, 4, 8, 8, 8)
UP_CHANNELS = 16


def _conv_bn_relu(cin: int, cout: int, bias: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a (1x1 conv-BN when the width changes) shortcut."""

    def __init__(self, nin: int, nout: int):
        super().__init__()
        self.bn = nn.Sequential(
            *_conv_bn_relu(nin, nout, bias=True), nn.Conv2d(nout, nout, 3, padding=1), nn.BatchNorm2d(nout)
        )
        if nin != nout:
            self.residual = nn.Sequential(nn.Conv2d(nin, nout, 1, bias=False), nn.BatchNorm2d(nout))
        else:
            self.residual = nn.Identity()

    def forward(self, x):
        return torch.relu(self.bn(x) + self.residual(x))


class Deconv(nn.Module):
    """ConvTranspose 4x4 stride 2 padding 1 (exactly doubles H, W), BN, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    def forward(self, x):
        return self.deconv(x)


def _stem(cin: int, nc: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(cin, nc, bias=True), *_conv_bn_relu(nc, nc, bias=True))


_LEVELS = ("second", "third", "fourth", "fifth", "sixth")


def _add_encoder(module: nn.Module, num_channels: int, nc: int) -> None:
    """Registers ``first`` and ``second_1`` ... ``sixth_2`` on ``module``, in state_dict order."""
    module.first = _stem(num_channels, nc)
    for level, (cin, cout) in enumerate(zip(SCALE_MULTIPLIERS[:-1], SCALE_MULTIPLIERS[1:])):
        setattr(module, f"{_LEVELS[level]}_1", ResBlock(cin * nc, cout * nc))
        setattr(module, f"{_LEVELS[level]}_2", ResBlock(cout * nc, cout * nc))


def _encode(module: nn.Module, x) -> list[torch.Tensor]:
    """The six scales' features: full, /2, ..., /32 (MaxPool 2x2, ceil_mode)."""
    features = [module.first(x)]
    for level in _LEVELS:
        h = nn.functional.max_pool2d(features[-1], 2, stride=2, ceil_mode=True)
        h = getattr(module, f"{level}_2")(getattr(module, f"{level}_1")(h))
        features.append(h)
    return features


class ResEncoder(nn.Module):
    def __init__(self, num_channels: int, nc: int):
        super().__init__()
        _add_encoder(self, num_channels, nc)

    def forward(self, x):
        return _encode(self, x)


def _add_decoder(module: nn.Module, scale_channels, num_classes: int) -> None:
    """Registers ``up1`` ... ``up6`` and ``final``: every scale to 16 channels at full size."""
    module.up1 = nn.Sequential(*_conv_bn_relu(scale_channels[0], UP_CHANNELS, bias=True))
    for k in range(2, 7):
        widths = [scale_channels[k - 1]] + [UP_CHANNELS * 2 ** (k - 2 - i) for i in range(k - 1)]
        setattr(module, f"up{k}", nn.Sequential(*[Deconv(a, b) for a, b in zip(widths[:-1], widths[1:])]))
    module.final = nn.Sequential(
        *_conv_bn_relu(6 * UP_CHANNELS, 6 * UP_CHANNELS, bias=True), nn.Conv2d(6 * UP_CHANNELS, num_classes, 1)
    )


def _decode(module: nn.Module, features) -> torch.Tensor:
    ups = [getattr(module, f"up{k + 1}")(f) for k, f in enumerate(features)]
    return module.final(torch.cat(ups, dim=1))


def _flatten(x):
    return x.reshape(x.shape[0], x.shape[1], -1)


class IntraPhaseAttention(nn.Module):
    """``sc``: DANet-style channel attention on the PV features.

    reference: out = gamma * softmax(rowmax(E) - E) X + X with E = X X^T;
    paper Eq. (1), read as DANet: out = softmax(X X^T) X + X (no gamma; weights summing to one over
    the summed channel).
    """

    def __init__(self, attention: str):
        super().__init__()
        self.attention = attention
        if attention == "reference":
            self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        flat = _flatten(x)
        energy = flat @ flat.transpose(1, 2)
        if self.attention == "reference":
            energy = energy.amax(dim=-1, keepdim=True) - energy
            out = self.gamma * (torch.softmax(energy, dim=-1) @ flat) + flat
        else:
            out = torch.softmax(energy, dim=-1) @ flat + flat
        return out.reshape(x.shape)


class InterPhaseAttention(nn.Module):
    """``pa``: channel weights of the ART features from their affinity to the PV features.

    reference: s = sigmoid(row sums of softmax(rowmax(E) - E)) with E = A P^T,
    which is sigmoid(1) everywhere; out = gamma * s * A + A.
    paper Eq. (2)-(4): x = softmax of E over the ART channels, s = sigmoid(row
    sums of x), out = s * A + A (no gamma).
    """

    def __init__(self, attention: str):
        super().__init__()
        self.attention = attention
        if attention == "reference":
            self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, pv, art):
        flat_art = _flatten(art)
        energy = flat_art @ _flatten(pv).transpose(1, 2)
        if self.attention == "reference":
            energy = energy.amax(dim=-1, keepdim=True) - energy
            weights = torch.sigmoid(torch.softmax(energy, dim=-1).sum(dim=-1, keepdim=True))
            out = self.gamma * (weights * flat_art) + flat_art
        else:
            weights = torch.sigmoid(torch.softmax(energy, dim=-2).sum(dim=-1, keepdim=True))
            out = weights * flat_art + flat_art
        return out.reshape(art.shape)


class FANetHead(nn.Module):
    """Phase-attention fusion of one scale: in_ch -> in_ch / 2 channels."""

    def __init__(self, in_ch: int, attention: str):
        super().__init__()
        inter = in_ch // 4
        self.conv5c = nn.Sequential(*_conv_bn_relu(in_ch, inter, bias=False))
        self.conv5p = nn.Sequential(*_conv_bn_relu(in_ch, inter, bias=False))
        self.sc = IntraPhaseAttention(attention)
        self.pa = InterPhaseAttention(attention)
        self.conv51 = nn.Sequential(*_conv_bn_relu(inter, inter, bias=False))
        self.conv52 = nn.Sequential(*_conv_bn_relu(inter, inter, bias=False))

    def forward(self, pv, art):
        f_pv, f_art = self.conv5c(pv), self.conv5p(art)
        return torch.cat([self.conv51(self.sc(f_pv)), self.conv52(self.pa(f_pv, f_art))], dim=1)


def _check_attention(attention: str) -> None:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention={attention!r}; use one of {ATTENTIONS}")


class RESNET_2D(nn.Module):
    """Single-branch ResSeg (PV only)."""

    def __init__(self, num_classes: int = 2, num_channels: int = 3, nc: int = 64):
        super().__init__()
        _add_encoder(self, num_channels, nc)
        _add_decoder(self, [m * nc for m in SCALE_MULTIPLIERS], num_classes)

    def forward(self, x):
        return _decode(self, _encode(self, x))


class RESNET_phase_att(nn.Module):
    """PA-ResSeg: PV and ART encoders fused by a FANetHead at each of the six scales."""

    def __init__(self, num_classes: int = 2, num_channels: int = 3, nc: int = 64, attention: str = "reference"):
        super().__init__()
        _check_attention(attention)
        self.PV_encoder = ResEncoder(num_channels, nc)
        self.ART_encoder = ResEncoder(num_channels, nc)
        for k, m in enumerate(SCALE_MULTIPLIERS):
            setattr(self, f"cf{k + 1}", FANetHead(m * nc, attention))
        _add_decoder(self, [m * nc // 2 for m in SCALE_MULTIPLIERS], num_classes)

    def forward(self, pv, art):
        fused = [
            getattr(self, f"cf{k + 1}")(p, a) for k, (p, a) in enumerate(zip(self.PV_encoder(pv), self.ART_encoder(art)))
        ]
        return _decode(self, fused)
