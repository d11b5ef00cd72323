"""Networks: compact CNN (focusnet, real time on one CPU core) and the published InceptionV3 + six FC layers.

Every network ends in the same two/three heads (see models/manifest.ts):
  abs_um     softplus >= 0, |defocus| in µm
  sign_logit logit of P(defocus > 0)
  log_var    log-variance of abs_um (µm^2)
A single signed regression is avoided on purpose: where the sign is unreadable it collapses to 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Heads(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.out = nn.Linear(cin, 3)

    def forward(self, h):
        o = self.out(h)
        return F.softplus(o[:, 0:1]), o[:, 1:2], o[:, 2:3].clamp(-10, 6)


def _cbr(cin, cout, k=3, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DSBlock(nn.Module):
    """Depthwise-separable block (depthwise 3x3, stride s, then pointwise) with a residual when shapes allow."""

    def __init__(self, cin, cout, s):
        super().__init__()
        self.dw = _cbr(cin, cin, 3, s, groups=cin)
        self.pw = _cbr(cin, cout, 1)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        y = self.pw(self.dw(x))
        return x + y if self.res else y


class FocusNet(nn.Module):
    """Compact CNN. The stem keeps full-resolution 3x3 filters (defocus lives in the finest frequencies), later
    stages are depthwise-separable; global mean AND standard-deviation pooling (blur changes feature energy)."""

    def __init__(self, width: int = 16, depth: int = 1):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_cbr(3, w, 3, 2))  # 160
        chans = [w, 2 * w, 4 * w, 6 * w, 8 * w]  # 80, 40, 20, 10, 5
        layers = []
        cin = w
        for c in chans:
            layers.append(DSBlock(cin, c, 2))
            for _ in range(depth - 1):
                layers.append(DSBlock(c, c, 1))
            cin = c
        self.body = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(2 * cin, 64), nn.ReLU(inplace=True))
        self.heads = Heads(64)

    def forward(self, x):
        f = self.body(self.stem(x))
        m = f.mean(dim=(2, 3))
        sd = (f * f).mean(dim=(2, 3)) - m * m
        h = torch.cat([m, torch.sqrt(sd.clamp_min(1e-6))], 1)
        return self.heads(self.fc(h))


class InceptionFC(nn.Module):
    """Published architecture: InceptionV3 trunk (random init, no downloads) + six fully connected layers."""

    def __init__(self):
        super().__init__()
        try:
            from torchvision.models import inception_v3  # type: ignore

            net = inception_v3(weights=None, aux_logits=False, init_weights=True)
            net.fc = nn.Identity()
            net.dropout = nn.Identity()
            self.trunk = net
            self.trunk_impl = "torchvision"
        except Exception:  # torchvision missing (e.g. Debian python3-torch): same architecture, local definition
            from inception import InceptionV3Trunk

            self.trunk = InceptionV3Trunk()
            self.trunk_impl = "local"
        dims = [2048, 1024, 512, 256, 128, 64, 32]
        fcs = []
        for a, b in zip(dims[:-1], dims[1:]):
            fcs += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.fc = nn.Sequential(*fcs)  # six FC layers
        self.heads = Heads(32)

    def forward(self, x):
        h = self.trunk(x)
        if isinstance(h, tuple):
            h = h[0]
        return self.heads(self.fc(torch.flatten(h, 1)))


def build(arch: str, **kw) -> nn.Module:
    if arch == "focusnet":
        return FocusNet(width=kw.get("width", 16), depth=kw.get("depth", 1))
    if arch == "inceptionv3":
        return InceptionFC()
    raise ValueError(f"unknown arch {arch}")


def describe(arch: str, **kw) -> str:
    if arch == "focusnet":
        return f"focusnet-w{kw.get('width', 16)}d{kw.get('depth', 1)} (compact CNN)"
    return "inceptionv3+6fc (Senaras-style)"
