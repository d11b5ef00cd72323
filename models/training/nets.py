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


def pooled(f: torch.Tensor) -> torch.Tensor:
    """FocusNet's global pooling: [B,C,H,W] -> [B,2C] = (mean, standard deviation) per channel."""
    m = f.mean(dim=(2, 3))
    sd = (f * f).mean(dim=(2, 3)) - m * m
    return torch.cat([m, torch.sqrt(sd.clamp_min(1e-6))], 1)


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
        return self.heads(self.fc(pooled(self.body(self.stem(x)))))


def stage_pools(base: "FocusNet", x: torch.Tensor) -> list:
    """A FocusNet's pooled (mean, std) features after the stem and after every body block; the last is what fc sees.
    What the branches on the frozen encoder (SignHeadNet, MagHeadNet, sign_head.encoder_features) read."""
    f = base.stem(x)
    st = [pooled(f)]
    for blk in base.body:
        f = blk(f)
        st.append(pooled(f))
    return st


class SignBranch(nn.Module):
    """Sign head on the frozen encoder: standardise the features (fixed mean/std from the training features), a small
    MLP (hidden = 0: logistic regression), and a temperature folded into `scale`. Output: sign logit [B,1]."""

    def __init__(self, d_in: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("mu", torch.zeros(d_in))
        self.register_buffer("sd", torch.ones(d_in))
        self.register_buffer("scale", torch.ones(1))
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if hidden else nn.Linear(d_in, 1)

    def forward(self, f):
        return self.net((f - self.mu) / self.sd) * self.scale


class SignHeadNet(nn.Module):
    """A trained FocusNet with its sign logit replaced by a SignBranch on the frozen encoder's features (`h` or
    `stages`); abs_um and log_var are the original network's, bit for bit."""

    def __init__(self, base: FocusNet, branch: SignBranch, features: str = "stages"):
        super().__init__()
        self.base, self.branch, self.features = base, branch, features

    def forward(self, x):
        st = stage_pools(self.base, x)
        h = st[-1]
        a, _, v = self.base.heads(self.base.fc(h))
        feats = h if self.features == "h" else torch.cat(st, 1)
        return a, self.branch(feats), v


class MagBranch(nn.Module):
    """Magnitude head on the frozen encoder (mag_head.py): standardise the features, a small MLP, then abs_um
    (softplus) and log_var like Heads. Output: ([B,1], [B,1])."""

    def __init__(self, d_in: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mu", torch.zeros(d_in))
        self.register_buffer("sd", torch.ones(d_in))
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 2)) if hidden else nn.Linear(d_in, 2)

    def forward(self, f):
        o = self.net((f - self.mu) / self.sd)
        return F.softplus(o[:, 0:1]), o[:, 1:2].clamp(-10, 6)


class MagHeadNet(nn.Module):
    """A trained FocusNet with abs_um and log_var replaced by a MagBranch on the frozen encoder's pooled features of
    every stage; sign_logit is the original network's, bit for bit."""

    def __init__(self, base: FocusNet, branch: MagBranch):
        super().__init__()
        self.base, self.branch = base, branch

    def forward(self, x):
        st = stage_pools(self.base, x)
        _, s, _ = self.base.heads(self.base.fc(st[-1]))
        a, v = self.branch(torch.cat(st, 1))
        return a, s, v


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


def load_file(path, map_location="cpu"):
    """A checkpoint or feature file this code wrote. Every load goes through here: torch >= 2.6 loads with
    weights_only=True by default and refuses the checkpoints' metadata (argument dicts, optics ranges, lineage); the
    GPU machine's image has torch 2.11, Debian's is 1.13. Only files of our own (the repository's checkpoints, a
    run's output) are loaded, so the full unpickler is what is wanted."""
    return torch.load(path, map_location=map_location, weights_only=False)


def build(arch: str, **kw) -> nn.Module:
    if arch == "focusnet":
        net = FocusNet(width=kw.get("width", 16), depth=kw.get("depth", 1))
        sb = kw.get("sign_branch")
        if sb:  # sign_head.py: the sign logit from a separate branch on the frozen encoder's features
            return SignHeadNet(net, SignBranch(sb["d_in"], sb.get("hidden", 32)), sb.get("features", "stages"))
        mb = kw.get("mag_branch")
        if mb:  # mag_head.py: abs_um / log_var from a separate branch on the frozen encoder's stage features
            return MagHeadNet(net, MagBranch(mb["d_in"], mb.get("hidden", 64)))
        return net
    if arch == "inceptionv3":
        return InceptionFC()
    raise ValueError(f"unknown arch {arch}")


def describe(arch: str, **kw) -> str:
    if arch == "focusnet":
        sb = kw.get("sign_branch")
        mb = kw.get("mag_branch")
        extra = f" + sign branch ({sb.get('features', 'stages')} features, MLP {sb.get('hidden', 32)})" if sb else ""
        extra += f" + magnitude branch (stage features, MLP {mb.get('hidden', 64)})" if mb else ""
        return f"focusnet-w{kw.get('width', 16)}d{kw.get('depth', 1)} (compact CNN){extra}"
    return "inceptionv3+6fc (Senaras-style)"
