"""A CPU-feasible sign head (model 0.3 work, issue 13): retrain only the sign of a trained focusnet on its frozen
encoder's features, computed once from instrument-varied data. The magnitude path (abs_um, log_var) is untouched, so
|d| is exactly that of the network the head is fitted to.

  # 1. features: forward passes of the frozen network on instrument-varied patches of the 13 training images
  OMP_NUM_THREADS=1 nice -n 19 /usr/bin/python3 models/training/sign_head.py features \
      --checkpoint models/training/checkpoints/focusnet-w32d2-0.2.0.pt --minutes 35 --max-patches 20000 --out /tmp/signhead/feats.pt
  # 2. head: fit on 10 images, temperature on the other 3, write a checkpoint (same network + a sign branch)
  OMP_NUM_THREADS=1 nice -n 19 /usr/bin/python3 models/training/sign_head.py fit \
      --checkpoint models/training/checkpoints/focusnet-w32d2-0.2.0.pt --features /tmp/signhead/feats.pt \
      --out models/training/checkpoints/focusnet-w32d2-0.3-exp2-signhead.pt

Data (features): per optics draw from optics.INSTRUMENT_RANGES (axial colour always in the training convention,
scaled to 0-15 % in 20 % of draws; NA, pixel, wavelengths wider) the draw is rendered twice, with +|SA| and with -|SA|
(same crops, same z, new noise): spherical aberration changes sign from slide to slide, so the head must not read it,
and the antithetic pair shows it exactly that. synth.INSTRUMENT_VARIATION for stain and camera noise; 320 px patches
as in evaluation and in the daemon.

Labels (cue_absent_target): P(z > 0) = 0.5 + (1[z > 0] - 0.5) * w(Δc), Δc = chroma_R - chroma_B (µm), the axial
colour that tells the sign relative to the objective; w ramps from 0 at Δc <= --cue-lo to 1 at Δc >= --cue-hi. Where
the colour cue is absent the only remaining asymmetry is SA, whose sign is a nuisance: PSF(z, SA, 0) = PSF(-z, -SA, 0),
so the patch carries no instrument-fixed information on the sign, and its target is 0.5. The sign loss is also
weighted down near focus as in train.loss_fn (|z| / 0.5, at most 1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402
import optics as O  # noqa: E402
import synth as S  # noqa: E402

# images whose features fit the temperature (and early stopping), never the head's weights: an image-level split, so
# the temperature is set on stains the head has not seen (evaluation is on held-out stains too)
CALIBRATION_IMAGES = ("kidney_multistain_nisar/orig_patch_stain_39.png", "histolab/medium-nuclei-score-level0.png",
                      "kather_deephistology/Source_small.png")


# ---------------------------------------------------------------- features of the frozen encoder

@torch.no_grad()
def encoder_features(model: nets.FocusNet, x: torch.Tensor) -> dict:
    """Frozen features of a FocusNet for normalised input x: `h` (the pooled last stage, what fc sees), `stages` (mean
    and std pooled after the stem and after every body block, concatenated), and the network's own outputs."""
    st = nets.stage_pools(model, x)
    h = st[-1]
    a, s, v = model.heads(model.fc(h))
    return {"h": h, "stages": torch.cat(st, 1), "abs": a[:, 0], "logit": s[:, 0], "log_var": v[:, 0]}


def generate_features(model, sources, *, minutes: float, max_patches: int, seed: int, z_per_draw: int = 6,
                      crops_per_z: int = 4, ranges=None, var=None, log=print, sa_near_zero: float = 0.0,
                      sparse_frac: float = 0.0) -> dict:
    """Instrument-varied patches -> frozen features. Returns tensors (float16 features, float32 metadata).
    sa_near_zero: share of optics draws whose spherical aberration is scaled to 0-10 % (no-aberration objectives);
    sparse_frac: share of patches that are tissue rims (mostly glass, synth.sparse_tissue_masks)."""
    ranges = ranges or O.INSTRUMENT_RANGES
    var = var or S.INSTRUMENT_VARIATION
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    out = {k: [] for k in ("h", "stages", "abs", "logit", "z", "sa", "chroma", "na", "pixel_um", "img", "draw", "twin", "rim")}
    t0, c0 = time.time(), time.process_time()
    n, draw = 0, 0
    while n < max_patches and time.time() - t0 < minutes * 60:
        ob = O.OpticsBatch.sample(ranges, 1, gen)
        if sa_near_zero > 0 and float(torch.rand(1, generator=gen)) < sa_near_zero:
            ob = O.OpticsBatch(ob.na, ob.n, ob.pixel_um, ob.wl, ob.chroma, ob.sa * 0.1 * torch.rand(1, generator=gen, dtype=ob.sa.dtype))
        zs = S.sample_z(z_per_draw, gen, 8.0)
        for z in zs.tolist():
            b = crops_per_z
            weights = torch.tensor([float(s.img.shape[1] * s.img.shape[2]) for s in sources])
            idx = torch.multinomial(weights, b, replacement=True, generator=gen)
            od = torch.cat([S.random_crops([sources[i]], 1, gen, var, "cpu", od=True) for i in idx.tolist()])
            rim = torch.zeros(b, dtype=torch.bool)
            if sparse_frac > 0:
                rim = torch.rand(b, generator=gen) < sparse_frac
                if rim.any():
                    od[rim] = S.on_glass_od(od[rim], S.sparse_tissue_masks(int(rim.sum()), gen))
            for twin, sgn in enumerate((1.0, -1.0)):
                obt = O.OpticsBatch(ob.na, ob.n, ob.pixel_um, ob.wl, ob.chroma, sgn * ob.sa.abs())
                k = O.psf_kernels(torch.tensor([z], dtype=torch.float64), obt, S.KERNEL, 3, fast=True)
                x8 = S.render_od(od, torch.full((b,), z), obt.take(torch.zeros(b, dtype=torch.long)), gen, var,
                                 kernels=k.expand(b, -1, -1, -1), fast=True)
                f = encoder_features(model, S.normalise(x8, S.NORMALISATION))
                for key in ("h", "stages"):
                    out[key].append(f[key].half())
                out["abs"].append(f["abs"])
                out["logit"].append(f["logit"])
                out["z"].append(torch.full((b,), z))
                out["sa"].append(torch.full((b,), float(obt.sa[0])))
                out["chroma"].append(obt.chroma.float().expand(b, 3))
                out["na"].append(torch.full((b,), float(ob.na[0])))
                out["pixel_um"].append(torch.full((b,), float(ob.pixel_um[0])))
                out["img"].append(idx.clone())
                out["draw"].append(torch.full((b,), draw))
                out["twin"].append(torch.full((b,), twin))
                out["rim"].append(rim.clone())
                n += b
        draw += 1
        if draw % 5 == 0:
            el = time.time() - t0
            log(f"{n} patches, {draw} optics draws, {n / el:.2f} patches/s wall, {n / max(1e-9, time.process_time() - c0):.2f} per CPU-s")
    res = {k: torch.cat(v) for k, v in out.items()}
    res["meta"] = {"sources": [s.path for s in sources], "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0,
                   "patches": n, "optics_draws": draw, "seed": seed, "z_per_draw": z_per_draw, "crops_per_z": crops_per_z,
                   "sa_near_zero": sa_near_zero, "sparse_frac": sparse_frac,
                   "ranges": ranges.__dict__, "variation": var.__dict__}
    return res


# ---------------------------------------------------------------- labels and the head

def cue_weight(chroma: torch.Tensor, lo: float = 0.1, hi: float = 0.3) -> torch.Tensor:
    """How much of the sign the axial colour can tell: 0 where chroma_R - chroma_B <= lo µm, 1 from hi µm, linear between.
    chroma: [N,3] (R, G, B focus shifts)."""
    dc = chroma[:, 0] - chroma[:, 2]
    return ((dc - lo) / (hi - lo)).clamp(0.0, 1.0)


def cue_absent_target(z: torch.Tensor, chroma: torch.Tensor, lo: float = 0.1, hi: float = 0.3) -> torch.Tensor:
    """Soft sign target P(z > 0): the hard label where the colour cue is present, 0.5 where it is absent."""
    return 0.5 + ((z > 0).float() - 0.5) * cue_weight(chroma, lo, hi)


def near_focus_weight(z: torch.Tensor) -> torch.Tensor:
    """train.loss_fn's sign weight: 0 at z = 0 up to 1 at |z| >= 0.5 µm (the sign is undefined at focus)."""
    return (z.abs() / 0.5).clamp(max=1.0)


def sample_weight(z, chroma, lo=0.1, hi=0.3, no_cue_weight=1.0):
    """Loss weight: near_focus_weight, times no_cue_weight where the colour cue is absent (linear in between): the
    head has to learn to recognise the absence of the cue, which is a minority of the data."""
    return near_focus_weight(z) * (1 + (no_cue_weight - 1) * (1 - cue_weight(chroma, lo, hi)))


def fit_head(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *, hidden: int = 32, epochs: int = 200,
             lr: float = 3e-3, wd: float = 1e-3, seed: int = 0, batch: int = 256, val=None, log=None) -> nets.SignBranch:
    """Weighted BCE against soft targets, AdamW, full passes over (x, target, weight); with val = (x, target, weight)
    keeps the epoch with the lowest validation loss (early stopping). Returns the head (temperature 1)."""
    torch.manual_seed(seed)
    head = nets.SignBranch(x.shape[1], hidden)
    x = x.float()
    head.mu.copy_(x.mean(0))
    head.sd.copy_(x.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.net.parameters(), lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(seed)
    best, best_state = float("inf"), None
    for ep in range(epochs):
        head.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            j = perm[i:i + batch]
            loss = (weight[j] * F.binary_cross_entropy_with_logits(head(x[j])[:, 0], target[j], reduction="none")).sum() / weight[j].sum().clamp_min(1e-9)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val is not None:
            vl = head_loss(head, *val)
            if vl < best:
                best, best_state = vl, {k: v.clone() for k, v in head.state_dict().items()}
            if log and (ep % 20 == 0 or ep == epochs - 1):
                log(f"epoch {ep}: train {head_loss(head, x, target, weight):.4f} val {vl:.4f}")
    if best_state is not None:
        head.load_state_dict(best_state)
    return head.eval()


@torch.no_grad()
def head_loss(head, x, target, weight) -> float:
    head.eval()
    l = F.binary_cross_entropy_with_logits(head(x.float())[:, 0], target, reduction="none")
    return float((weight * l).sum() / weight.sum().clamp_min(1e-9))


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """Scale s > 0 minimising the weighted BCE of s * logits (temperature 1/s), by a log-spaced search then golden
    section on log s."""
    logits = logits.detach().float()

    def nll(ls):
        return float((weight * F.binary_cross_entropy_with_logits(math.exp(ls) * logits, target, reduction="none")).sum())

    grid = np.linspace(-4, 2, 61)
    i = int(np.argmin([nll(v) for v in grid]))
    a, b = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    gr = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - gr * (b - a), a + gr * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


# ---------------------------------------------------------------- fitting on cached features

def split_by_image(feats: dict, calibration_images=CALIBRATION_IMAGES):
    """Boolean mask [N]: True = a calibration image (temperature, early stopping), False = head training."""
    names = feats["meta"]["sources"]
    cal_idx = [i for i, p in enumerate(names) if p in calibration_images]
    return torch.isin(feats["img"], torch.tensor(cal_idx))


@torch.no_grad()
def sign_report(logit: torch.Tensor, feats: dict, mask: torch.Tensor, lo: float, hi: float) -> dict:
    """Validation numbers of a sign logit on the patches `mask`: where the colour cue is present (weight 1) accuracy and
    ECE (1 <= |z| <= 6, as eval_grid), split by the sign of SA; where it is absent (weight 0) the mean confidence."""
    from eval_grid import ece
    z, sa, w = feats["z"][mask], feats["sa"][mask], cue_weight(feats["chroma"][mask], lo, hi)
    p = torch.sigmoid(logit[mask].float())
    out = {}
    band = (z.abs() >= 1) & (z.abs() <= 6)
    for tag, sel in (("cue", w >= 1), ("cue_sa+", (w >= 1) & (sa > 0)), ("cue_sa-", (w >= 1) & (sa < 0))):
        m = sel & band
        out[f"acc_{tag}"] = float(((p[m] >= 0.5) == (z[m] > 0)).float().mean()) if m.any() else None
        out[f"ece_{tag}"] = ece(p[sel].numpy(), z[sel].numpy())[0] if sel.any() else None
        conf = torch.maximum(p[m], 1 - p[m])
        wrong = (p[m] >= 0.5) != (z[m] > 0)
        out[f"conf80_wrong_{tag}"] = float(((conf >= 0.8) & wrong).float().mean()) if m.any() else None
    m = (w <= 0) & band
    out["mean_conf_no_cue"] = float(torch.maximum(p[m], 1 - p[m]).mean()) if m.any() else None
    out["conf80_share_no_cue"] = float((torch.maximum(p[m], 1 - p[m]) >= 0.8).float().mean()) if m.any() else None
    out["n"] = int(mask.sum())
    return out


def fit_candidates(feats: dict, *, lo=0.1, hi=0.3, configs=(("h", 0), ("h", 32), ("stages", 0), ("stages", 32)), epochs=60,
                   seed=0, no_cue_weight=1.0, log=print):
    """Fit each (features, hidden) head on the training images, keep the epoch with the lowest loss on the calibration
    images, fit the temperature there. Returns [(config, head, report)] and the 0.2.0 logit's report."""
    cal = split_by_image(feats)
    tr = ~cal
    target = cue_absent_target(feats["z"], feats["chroma"], lo, hi)
    weight = sample_weight(feats["z"], feats["chroma"], lo, hi, no_cue_weight)
    base = {"train": sign_report(feats["logit"], feats, tr, lo, hi), "calibration": sign_report(feats["logit"], feats, cal, lo, hi)}
    log(f"base sign logit: {json.dumps(base)}")
    res = []
    for fk, hidden in configs:
        x = feats[fk].float()
        t = time.time()
        head = fit_head(x[tr], target[tr], weight[tr], hidden=hidden, epochs=epochs, seed=seed,
                        val=(x[cal], target[cal], weight[cal]))
        with torch.no_grad():
            raw = head(x)[:, 0]
        s = fit_temperature(raw[cal], target[cal], weight[cal])
        head.scale.fill_(s)
        with torch.no_grad():
            lg = head(x)[:, 0]
        rep = {"features": fk, "hidden": hidden, "temperature_scale": s, "val_loss": head_loss(head, x[cal], target[cal], weight[cal]),
               "train_loss": head_loss(head, x[tr], target[tr], weight[tr]), "seconds": time.time() - t,
               "train": sign_report(lg, feats, tr, lo, hi), "calibration": sign_report(lg, feats, cal, lo, hi)}
        log(json.dumps(rep))
        res.append(((fk, hidden), head, rep))
    return res, base


def branch_checkpoint(base_ck: dict, branch_kw: dict, branch: torch.nn.Module, fit_info: dict, tag: str) -> dict:
    """A checkpoint in train.py's format whose network is base + a branch on its frozen encoder (nets.build with
    `branch_kw`, e.g. {"sign_branch": {...}}); the fit's report is kept under `tag` ("sign_head", "mag_head")."""
    kw = dict(base_ck["kw"], **branch_kw)
    model = nets.build(base_ck["arch"], **kw)
    model.base.load_state_dict(base_ck["state_dict"])
    model.branch.load_state_dict(branch.state_dict())
    lineage = base_ck.get("lineage", []) + [{k: base_ck.get(k) for k in ("steps", "patches", "device_name", "variation")} |
                                            {"args": base_ck.get("args")}]
    return {"arch": base_ck["arch"], "kw": kw, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "args": fit_info.get("args"), "z_max": base_ck.get("z_max", 8.0), "train_sources": fit_info["sources"],
            "optics_ranges": fit_info["ranges"], "variation": fit_info["variation"],
            "generator": {f"{tag}_features": fit_info["generator"]},
            "steps": fit_info.get("epochs"), "patches": fit_info["patches"], "patches_per_s": fit_info.get("patches_per_s"),
            "device_name": "cpu", "lineage": lineage, tag: fit_info}


def build_checkpoint(base_ck: dict, head: nets.SignBranch, features: str, hidden: int, fit_info: dict) -> dict:
    """A checkpoint whose network is base + sign branch (nets.build with kw.sign_branch)."""
    return branch_checkpoint(base_ck, {"sign_branch": {"features": features, "hidden": hidden, "d_in": int(head.mu.shape[0])}},
                             head, fit_info, "sign_head")


def add_features_parser(sub, help: str, minutes: float, seed: int):
    """The `features` subcommand's arguments (sign_head.py and mag_head.py)."""
    fe = sub.add_parser("features", help=help)
    fe.add_argument("--checkpoint", required=True)
    fe.add_argument("--out", required=True)
    fe.add_argument("--minutes", type=float, default=minutes)
    fe.add_argument("--max-patches", type=int, default=20000)
    fe.add_argument("--seed", type=int, default=seed)
    fe.add_argument("--threads", type=int, default=1)
    fe.add_argument("--data-root", default=None)
    return fe


def run_features(a, **generate_kw) -> None:
    """`features`: the frozen network's features of generated patches of the 13 training images (never a held-out
    source: asserted) -> a temp file, written atomically."""
    from evaluate import load_checkpoint
    model, _ck = load_checkpoint(a.checkpoint)
    root = Path(a.data_root) if a.data_root else S.default_data_root()
    sources = S.with_od(S.load_sources(root, {"train"}))
    assert not {s.path for s in sources} & {p for p, *_r, split in S.SOURCES if split != "train"}
    res = generate_features(model, sources, minutes=a.minutes, max_patches=a.max_patches, seed=a.seed,
                            log=lambda s: print(s, flush=True), **generate_kw)
    res["meta"]["checkpoint"] = a.checkpoint
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(res, a.out + ".tmp")
    os.replace(a.out + ".tmp", a.out)
    print(json.dumps({k: v for k, v in res["meta"].items() if k in ("patches", "optics_draws", "seconds", "cpu_seconds")}))


# ---------------------------------------------------------------- CLI

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_features_parser(sub, "instrument-varied patches -> frozen features (a temp file, not the repo)", 30.0, 1313)
    fi = sub.add_parser("fit", help="fit the sign head on cached features, write a checkpoint")
    fi.add_argument("--checkpoint", required=True, help="the network whose features were cached")
    fi.add_argument("--features", required=True)
    fi.add_argument("--out", required=True)
    fi.add_argument("--report", help="JSON of every candidate's validation numbers")
    fi.add_argument("--cue-lo", type=float, default=0.1)
    fi.add_argument("--cue-hi", type=float, default=0.3)
    fi.add_argument("--epochs", type=int, default=60)
    fi.add_argument("--no-cue-weight", type=float, default=1.0, help="loss weight of cue-absent patches (relative)")
    fi.add_argument("--configs", default="h:0,h:32,stages:0,stages:32", help="features:hidden candidates")
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.cmd == "fit":
        feats = nets.load_file(a.features)
        configs = [(c.split(":")[0], int(c.split(":")[1])) for c in a.configs.split(",")]
        res, base = fit_candidates(feats, lo=a.cue_lo, hi=a.cue_hi, configs=configs, epochs=a.epochs, seed=a.seed,
                                   no_cue_weight=a.no_cue_weight,
                                   log=lambda s: print(s, flush=True))
        (fk, hidden), head, rep = min(res, key=lambda r: r[2]["val_loss"])  # the lowest calibration-image loss
        meta = feats["meta"]
        info = {"chosen": rep, "candidates": [r[2] for r in res], "base_sign_logit": base, "sources": meta["sources"],
                "calibration_images": list(CALIBRATION_IMAGES), "ranges": meta["ranges"], "variation": meta["variation"],
                "generator": {k: meta[k] for k in ("seed", "z_per_draw", "crops_per_z", "optics_draws")} | {"antithetic_sa": True, "patch_px": S.PATCH},
                "patches": meta["patches"], "patches_per_s": meta["patches"] / max(1e-9, meta["seconds"]),
                "feature_seconds": meta["seconds"], "feature_cpu_seconds": meta["cpu_seconds"], "epochs": a.epochs,
                "label": f"cue_absent_target lo {a.cue_lo} hi {a.cue_hi} µm (chroma_R - chroma_B), sample_weight (near focus, "
                         f"no-cue x{a.no_cue_weight})",
                "args": {k: v for k, v in vars(a).items() if k not in ("features", "out", "report")}}
        base_ck = nets.load_file(a.checkpoint)
        ck = build_checkpoint(base_ck, head, fk, hidden, info)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ck, a.out)
        if a.report:
            Path(a.report).write_text(json.dumps(info, indent=1))
        print(f"chosen {fk}:{hidden} (scale {rep['temperature_scale']:.3f}) -> {a.out}")
        return
    if a.cmd == "features":
        run_features(a)


if __name__ == "__main__":
    main()
