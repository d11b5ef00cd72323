"""A CPU-feasible magnitude head (issue 11: the model's blind zones): refit only |defocus| (abs_um, log_var) of a
trained focusnet on its frozen encoder's features, computed from patches whose aberrations point both ways.

Why: the magnitude of defocus can be read from one tile whatever the instrument, but 0.2.0 was trained with spherical
aberration and axial colour of one sign only. On the virtual scanner's instruments whose cues are reversed or absent it
reads some tiles 1-5 µm out as in focus (e.g. `none` optics: +1.5...+4.8 µm read as 0.05-0.5 µm), and no rule of the
loop sees a tile read in focus. Here the same frozen features (mean and std pooled after the stem and after every body
block, as sign_head.py) feed a small MLP trained on |z| over optics with SA of both signs (an antithetic twin per
draw), SA near zero in a share of the draws, axial colour in the training convention and near zero. By the exact
symmetry PSF(z, SA, colour) == PSF(-z, -SA, -colour) (tests/test_instruments.py) that covers reversed axial colour for
|z| too. The sign logit stays 0.2.0's, bit for bit; direction is learned per instrument by the daemon.

  # 1. features (forward passes of the frozen network; two processes side by side on two cores)
  OMP_NUM_THREADS=1 nice -n 10 /usr/bin/python3 models/training/mag_head.py features \
      --checkpoint models/training/checkpoints/focusnet-w32d2-0.2.0.pt --minutes 20 --seed 1 --out /tmp/mag/f1.pt
  # 2. head: fit on 10 training images, early stopping on the other 3 (image-level split), write a checkpoint
  OMP_NUM_THREADS=1 /usr/bin/python3 models/training/mag_head.py fit \
      --checkpoint models/training/checkpoints/focusnet-w32d2-0.2.0.pt --features /tmp/mag/f1.pt /tmp/mag/f2.pt \
      --out models/training/checkpoints/focusnet-w32d2-0.2.0-mag.pt --report /tmp/mag/report.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402
import synth as S  # noqa: E402
from sign_head import CALIBRATION_IMAGES, add_features_parser, branch_checkpoint, run_features, split_by_image  # noqa: E402

SA_NEAR_ZERO = 0.2  # share of optics draws with 0-10 % of the drawn spherical aberration (objectives without it)
SPARSE_FRAC = 0.15  # share of tissue-rim patches (mostly glass), as 0.2.0's second training step


def mag_loss(abs_p: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """train.loss_fn's magnitude terms: smooth L1 on |z| plus 0.1 × the Gaussian NLL of the (detached) error."""
    t = z.abs()
    w = torch.ones_like(t) if weight is None else weight
    l_abs = (w * F.smooth_l1_loss(abs_p, t, beta=0.5, reduction="none")).sum() / w.sum()
    l_nll = (w * 0.5 * (torch.exp(-log_var) * (abs_p.detach() - t) ** 2 + log_var)).sum() / w.sum()
    return l_abs + 0.1 * l_nll


def fit_mag(x: torch.Tensor, z: torch.Tensor, *, hidden: int = 64, epochs: int = 80, lr: float = 2e-3, wd: float = 1e-3,
            seed: int = 0, batch: int = 256, val=None, log=None) -> tuple[nets.MagBranch, dict]:
    """AdamW over (x, z); with val = (x, z) keeps the epoch with the lowest validation loss (early stopping)."""
    torch.manual_seed(seed)
    head = nets.MagBranch(x.shape[1], hidden)
    x = x.float()
    head.mu.copy_(x.mean(0))
    head.sd.copy_(x.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.net.parameters(), lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(seed)
    best, best_state, best_ep = float("inf"), None, -1
    for ep in range(epochs):
        head.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            j = perm[i:i + batch]
            a, v = head(x[j])
            loss = mag_loss(a[:, 0], v[:, 0], z[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val is not None:
            with torch.no_grad():
                head.eval()
                a, v = head(val[0].float())
                vl = float(mag_loss(a[:, 0], v[:, 0], val[1]))
            if vl < best:
                best, best_ep, best_state = vl, ep, {k: w.clone() for k, w in head.state_dict().items()}
            if log and (ep % 10 == 0 or ep == epochs - 1):
                log(f"epoch {ep}: val {vl:.4f}")
    if best_state is not None:
        head.load_state_dict(best_state)
    return head.eval(), {"val_loss": best, "best_epoch": best_ep}


@torch.no_grad()
def mag_report(pred: torch.Tensor, feats: dict, mask: torch.Tensor, tol: float = 1.0) -> dict:
    """|d| numbers on the patches `mask`, overall and per aberration group: MAE over |z| <= 4 µm; `blind` = share of
    1.5 <= |z| <= 5 µm patches read within the tolerance (an out-of-focus tile called in focus); `false_alarm` = share
    of |z| <= 0.5 µm patches read beyond it."""
    z, sa, ch, rim = feats["z"], feats["sa"], feats["chroma"], feats.get("rim", torch.zeros_like(feats["z"], dtype=torch.bool))
    dc = ch[:, 0] - ch[:, 2]
    groups = {"all": mask, "sa+": mask & (sa > 0.02), "sa-": mask & (sa < -0.02), "sa~0": mask & (sa.abs() <= 0.02),
              "colour~0": mask & (dc < 0.1), "rim": mask & rim, "sa~0,colour~0": mask & (sa.abs() <= 0.05) & (dc < 0.15)}
    out = {}
    for tag, m in groups.items():
        if not m.any():
            continue
        za, p = z[m].abs(), pred[m].float()
        near = za <= 4
        band = (za >= 1.5) & (za <= 5)
        foc = za <= 0.5
        out[tag] = {"n": int(m.sum()),
                    "mae_abs_le4": float((p[near] - za[near]).abs().mean()) if near.any() else None,
                    "blind": float((p[band] < tol).float().mean()) if band.any() else None,
                    "false_alarm": float((p[foc] > tol).float().mean()) if foc.any() else None}
    return out


def load_features(paths: list[str]) -> dict:
    """Concatenate feature files made from the same checkpoint and sources (different seeds)."""
    parts = [nets.load_file(p) for p in paths]
    meta = parts[0]["meta"]
    for q in parts[1:]:
        assert q["meta"]["sources"] == meta["sources"], "feature files from different source lists"
    res = {k: torch.cat([q[k] for q in parts]) for k in parts[0] if k != "meta"}
    res["meta"] = dict(meta, patches=sum(q["meta"]["patches"] for q in parts), seconds=sum(q["meta"]["seconds"] for q in parts),
                       cpu_seconds=sum(q["meta"]["cpu_seconds"] for q in parts), seeds=[q["meta"]["seed"] for q in parts],
                       optics_draws=sum(q["meta"]["optics_draws"] for q in parts))
    return res


def build_checkpoint(base_ck: dict, head: nets.MagBranch, hidden: int, fit_info: dict) -> dict:
    """A checkpoint whose network is base + magnitude branch (nets.build with kw.mag_branch)."""
    return branch_checkpoint(base_ck, {"mag_branch": {"hidden": hidden, "d_in": int(head.mu.shape[0])}}, head, fit_info, "mag_head")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_features_parser(sub, "aberration-varied patches -> frozen features (a temp file, not the repo)", 20.0, 1)
    fi = sub.add_parser("fit", help="fit the magnitude head on cached features, write a checkpoint")
    fi.add_argument("--checkpoint", required=True, help="the network whose features were cached")
    fi.add_argument("--features", required=True, nargs="+")
    fi.add_argument("--out", required=True)
    fi.add_argument("--report")
    fi.add_argument("--hidden", type=int, default=64)
    fi.add_argument("--epochs", type=int, default=80)
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.cmd == "features":
        run_features(a, sa_near_zero=SA_NEAR_ZERO, sparse_frac=SPARSE_FRAC)
        return
    feats = load_features(a.features)
    cal = split_by_image(feats)
    tr = ~cal
    x = feats["stages"].float()
    t0 = time.time()
    head, fit = fit_mag(x[tr], feats["z"][tr], hidden=a.hidden, epochs=a.epochs, seed=a.seed,
                        val=(x[cal], feats["z"][cal]), log=lambda s: print(s, flush=True))
    with torch.no_grad():
        pred = head(x)[0][:, 0]
    rep = {"base_0.2.0": {"train": mag_report(feats["abs"], feats, tr), "calibration": mag_report(feats["abs"], feats, cal)},
           "head": {"train": mag_report(pred, feats, tr), "calibration": mag_report(pred, feats, cal)}}
    print(json.dumps(rep, indent=1))
    meta = feats["meta"]
    info = {"fit": fit | {"seconds": time.time() - t0}, "report": rep, "sources": meta["sources"],
            "calibration_images": list(CALIBRATION_IMAGES), "ranges": meta["ranges"], "variation": meta["variation"],
            "generator": {k: meta.get(k) for k in ("seeds", "z_per_draw", "crops_per_z", "optics_draws", "sa_near_zero", "sparse_frac")}
            | {"antithetic_sa": True, "patch_px": S.PATCH},
            "patches": meta["patches"], "feature_seconds": meta["seconds"], "feature_cpu_seconds": meta["cpu_seconds"],
            "epochs": a.epochs, "args": {k: v for k, v in vars(a).items() if k not in ("features", "out", "report")}}
    base_ck = nets.load_file(a.checkpoint)
    ck = build_checkpoint(base_ck, head, a.hidden, info)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, a.out)
    if a.report:
        Path(a.report).write_text(json.dumps(info, indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
