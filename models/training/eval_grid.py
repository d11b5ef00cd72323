"""Evaluation grid of instrument variants (issue 13): instruments.VARIANTS x held-out tissue, before and after a
per-instrument calibration that emulates `focusd calibrate`.

  OMP_NUM_THREADS=1 nice -n 15 /usr/bin/python3 models/training/eval_grid.py \
      --checkpoint models/training/checkpoints/focusnet-w32d2-0.2.0.pt --out /tmp/grid-0.2.0.json --md /tmp/grid-0.2.0.md
  (several --checkpoint paths: all evaluated on the same rendered patches, plus a table comparing the first with each)

Per variant: the 5 held-out images (2 of a held-out source, 3 held-out stains), z = -6..6 µm in 0.5 µm steps,
--per-z random crops each (same crops, noise and nuisance draws for every variant and every checkpoint: paired).

"After calibration" emulates tools/calibrate.ts + models/calibration.ts: for each held-out image, a focus stack of a
*different* held-out image (image i is calibrated on image (i+2) mod 5) under the same instrument: --stack-patches
fixed crops per slice, z = -6..6 µm step --stack-step, per slice the median abs_um and median sign_logit over its
patches (as calibrate takes the median over an image's patches); the in-focus slice by the normalised variance of the
Laplacian (calibrate's default `nvl`); then the exact binomial sign test (|z - z_focus| >= 1 µm, alpha 0.01) decides
model / inverted / unrecoverable and a least-squares line maps the signed output (|output| when unrecoverable) to
z - z_focus; the image's patches are then mapped as models/manifest.ts toPrediction() does (unrecoverable: sign +,
confidence 0.5).

Metrics (signed = sign * abs_um; p = P(z > 0) = sigmoid(sign_logit), after calibration flipped / 0.5):
  mae_signed     MAE of the signed prediction, |z| <= 4 µm        r2, slope, intercept: signed pred vs z, |z| <= 4
  within_1um     share |signed - z| <= 1 µm, |z| <= 4              sign_acc: 1 <= |z| <= 6
  ece            expected calibration error of the sign confidence max(p, 1-p), 0.5 <= |z| <= 6, 10 bins on [0.5, 1]
  conf80_share   share of 1 <= |z| <= 6 patches with confidence >= 0.8; conf80_acc: their sign accuracy;
                 conf80_wrong: share of 1 <= |z| <= 6 patches with confidence >= 0.8 and the wrong sign
  abs_mae        MAE of |prediction| vs |z|, |z| <= 4 (before calibration: the raw abs_um)
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instruments as I  # noqa: E402
import optics as O  # noqa: E402
import synth as S  # noqa: E402

HELD_OUT = ("holdout_source", "holdout_stain")


# ---------------------------------------------------------------- metrics (pure numpy; tests/test_eval_grid.py)

def ece(p_pos, z, bins: int = 10, min_abs_z: float = 0.5, max_abs_z: float = 6.0):
    """Expected calibration error of the sign: confidence max(p, 1-p) vs whether the predicted sign (p >= 0.5 -> +)
    is right, equal-width bins on [0.5, 1], over min_abs_z <= |z| <= max_abs_z. Returns (ece, reliability rows)."""
    p_pos, z = np.asarray(p_pos, float), np.asarray(z, float)
    m = (np.abs(z) >= min_abs_z) & (np.abs(z) <= max_abs_z)
    p, zz = p_pos[m], z[m]
    if len(p) == 0:
        return float("nan"), []
    conf = np.maximum(p, 1 - p)
    right = ((p >= 0.5) == (zz > 0)).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    total, rows = 0.0, []
    for b in range(bins):
        sel = idx == b
        if not sel.any():
            continue
        c, a, n = float(conf[sel].mean()), float(right[sel].mean()), int(sel.sum())
        total += n / len(p) * abs(a - c)
        rows.append({"bin": [float(edges[b]), float(edges[b + 1])], "n": n, "confidence": c, "accuracy": a})
    return float(total), rows


def sign_at_confidence(p_pos, z, thr: float = 0.8, min_abs_z: float = 1.0, max_abs_z: float = 6.0):
    """(share of patches whose sign confidence >= thr, sign accuracy among them or None) over min..max |z|."""
    p_pos, z = np.asarray(p_pos, float), np.asarray(z, float)
    m = (np.abs(z) >= min_abs_z) & (np.abs(z) <= max_abs_z)
    p, zz = p_pos[m], z[m]
    conf = np.maximum(p, 1 - p)
    sel = conf >= thr
    if not sel.any():
        return 0.0, None
    return float(sel.mean()), float(((p[sel] >= 0.5) == (zz[sel] > 0)).mean())


def boundary_metrics(z, abs_pred, tol: float = 1.0, band: tuple = S.BOUNDARY_UM):
    """|d| where the daemon's in/out verdict is decided (|z| within `band` around the tolerance `tol`): bias and sd of
    |d| - |z| (the closed-loop oracle puts the loop's targets at about <= 0.1 µm unbiased error here,
    docs/simulator.md), the share of patches beyond the tolerance read within it (tiles the loop would leave out of
    focus), the share within it read beyond (needless re-acquisitions), and the bias at each |z| of the grid in the
    band. Per patch: the daemon's median over a tile's patches narrows the sd, not the bias. None without patches."""
    z, a = np.abs(np.asarray(z, float)), np.asarray(abs_pred, float)
    m = (z >= band[0]) & (z <= band[1])
    if not m.any():
        return None
    r = a[m] - z[m]
    beyond, within = m & (z > tol), m & (z < tol)
    return {
        "band_um": list(band), "tolerance_um": tol, "n": int(m.sum()),
        "bias": float(r.mean()), "sd": float(r.std()),
        "read_in_beyond": float(np.mean(a[beyond] <= tol)) if beyond.any() else None,
        "read_out_within": float(np.mean(a[within] > tol)) if within.any() else None,
        "bias_by_abs_z": {f"{v:g}": float(np.mean(a[m & (z == v)] - v)) for v in np.unique(z[m])},
    }


def grid_metrics(z, signed, abs_pred, p_pos) -> dict:
    z, signed, abs_pred, p_pos = (np.asarray(v, float) for v in (z, signed, abs_pred, p_pos))
    m4 = np.abs(z) <= 4.0
    zz, pp = z[m4], signed[m4]
    ss_tot = float(np.sum((zz - zz.mean()) ** 2))
    slope, intercept = np.polyfit(zz, pp, 1)
    ms = (np.abs(z) >= 1.0) & (np.abs(z) <= 6.0)
    e, rel = ece(p_pos, z)
    share, acc80 = sign_at_confidence(p_pos, z)
    return {
        "n": int(len(z)),
        "mae_signed": float(np.mean(np.abs(pp - zz))),
        "r2": 1 - float(np.sum((pp - zz) ** 2)) / ss_tot,
        "slope": float(slope), "intercept": float(intercept),
        "within_1um": float(np.mean(np.abs(pp - zz) <= 1.0)),
        "sign_acc": float(np.mean((p_pos[ms] >= 0.5) == (z[ms] > 0))),
        "ece": e, "conf80_share": share, "conf80_acc": acc80,
        "conf80_wrong": share * (1 - acc80) if acc80 is not None else 0.0,
        "abs_mae": float(np.mean(np.abs(abs_pred[m4] - np.abs(zz)))),
        "boundary": boundary_metrics(z, abs_pred),
        "reliability": rel,
    }


def binomial_tail_half(k: int, n: int) -> float:
    """P(X >= k), X ~ Binomial(n, 1/2) (models/calibration.ts binomialTailHalf)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0 ** n)


def sign_test(z_rel, sign_logit, min_abs_z: float = 1.0, alpha: float = 0.01) -> dict:
    """models/calibration.ts signTest: agreement of sign_logit > 0 with z_rel > 0 where |z_rel| >= min_abs_z."""
    z_rel, sign_logit = np.asarray(z_rel, float), np.asarray(sign_logit, float)
    m = np.abs(z_rel) >= min_abs_z
    n = int(m.sum())
    agree = int(((sign_logit[m] > 0) == (z_rel[m] > 0)).sum())
    p_model, p_inv = binomial_tail_half(agree, n), binomial_tail_half(n - agree, n)
    decision = "model" if n > 0 and p_model < alpha else "inverted" if n > 0 and p_inv < alpha else "unrecoverable"
    return {"n": n, "agree": agree, "p_model": p_model, "p_inverted": p_inv, "decision": decision}


def fit_calibration(z_rel, abs_um, sign_logit, min_abs_z: float = 1.0, alpha: float = 0.01) -> dict:
    """models/calibration.ts fitCalibration (least squares): sign test, then a line from the (possibly flipped)
    signed output, or |output| when the sign is unrecoverable, to z_rel (|z_rel|)."""
    z_rel, abs_um, sign_logit = (np.asarray(v, float) for v in (z_rel, abs_um, sign_logit))
    st = sign_test(z_rel, sign_logit, min_abs_z, alpha)
    if st["decision"] == "unrecoverable":
        x, y = np.abs(abs_um), np.abs(z_rel)
    else:
        d = -1.0 if st["decision"] == "inverted" else 1.0
        x, y = d * np.where(sign_logit >= 0, 1.0, -1.0) * np.maximum(0, abs_um), z_rel
    slope, intercept = np.polyfit(x, y, 1)
    return {"sign": st["decision"], "slope": float(slope), "intercept": float(intercept), "sign_test": st}


def apply_calibration(cal: dict, abs_um, sign_logit):
    """models/manifest.ts toPrediction: (signed defocus µm, P(z > 0) as the daemon would state it)."""
    abs_um, sign_logit = np.asarray(abs_um, float), np.asarray(sign_logit, float)
    p = 1 / (1 + np.exp(-sign_logit))
    sign = np.where(p >= 0.5, 1.0, -1.0)
    if cal["sign"] == "inverted":
        sign, p = -sign, 1 - p
    if cal["sign"] == "unrecoverable":
        return np.maximum(0, cal["slope"] * np.maximum(0, abs_um) + cal["intercept"]), np.full_like(p, 0.5)
    return cal["slope"] * sign * np.maximum(0, abs_um) + cal["intercept"], p


def nvl(gray: np.ndarray) -> float:
    """models/calibration.ts nvlSharpness: variance of the 4-neighbour Laplacian / mean²."""
    g = gray.astype(np.float64)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var() / max(1e-12, g.mean() ** 2))


def table_markdown(res: dict, when: str) -> str:
    """One markdown table (rows = variants) of the grid's metrics, `when` = before | after."""
    head = ("| variant | MAE signed µm | R² | slope / intercept | within ±1 µm | sign \\|z\\|≥1 | ECE | conf≥0.8: share / right "
            "| \\|d\\| MAE µm |" + (" calibrate: sign (5 stacks) |" if when.startswith("after") else ""))
    lines = [head, "|" + "---|" * (head.replace("\\|", "").count("|") - 1)]
    for name, v in res["variants"].items():
        m = v[when]
        c80 = f"{100 * m['conf80_share']:.0f} % / " + ("—" if m["conf80_acc"] is None else f"{100 * m['conf80_acc']:.1f} %")
        row = (f"| {name} | {m['mae_signed']:.2f} | {m['r2']:.3f} | {m['slope']:.2f} / {m['intercept']:+.2f} | "
               f"{100 * m['within_1um']:.1f} % | {100 * m['sign_acc']:.1f} % | {m['ece']:.3f} | {c80} | {m['abs_mae']:.2f} |")
        if when.startswith("after"):
            ds = [c["sign"] for c in v["calibrations_true_focus" if when == "after_true_focus" else "calibrations"]]
            row += " " + ", ".join(f"{k} {ds.count(k)}" for k in ("model", "inverted", "unrecoverable") if ds.count(k)) + " |"
        lines.append(row)
    return "\n".join(lines)


def boundary_text(b) -> str:
    """`bias ± sd / beyond read in / within read out` of boundary_metrics, or — (grids written before it)."""
    if not b:
        return "—"
    pct = lambda v: "—" if v is None else f"{100 * v:.0f} %"
    return f"{b['bias']:+.2f} ± {b['sd']:.2f} / {pct(b['read_in_beyond'])} / {pct(b['read_out_within'])}"


def boundary_markdown(res: dict) -> str:
    """Rows = variants, |d| at the tolerance before calibration, after, after with the true in-focus slice."""
    whens = [w for w in ("before", "after", "after_true_focus") if all(w in v for v in res["variants"].values())]
    head = "| variant | " + " | ".join(whens) + " |"
    lines = [head, "|---|" + "---|" * len(whens)]
    for name, v in res["variants"].items():
        lines.append(f"| {name} | " + " | ".join(boundary_text(v[w].get("boundary")) for w in whens) + " |")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    out = f"before calibration\n\n{table_markdown(res, 'before')}\n\nafter calibration (in-focus slice by nvl, as focusd calibrate)\n\n{table_markdown(res, 'after')}\n"
    if all("after_true_focus" in v for v in res["variants"].values()):
        out += f"\nafter calibration with the stacks' true in-focus slice (sign test + line only)\n\n{table_markdown(res, 'after_true_focus')}\n"
    out += (f"\n\\|d\\| at the tolerance (\\|z\\| {S.BOUNDARY_UM[0]}–{S.BOUNDARY_UM[1]} µm, per patch): bias ± sd of \\|d\\| − \\|z\\| µm / "
            f"beyond ±1 µm read within / within read beyond\n\n{boundary_markdown(res)}\n")
    return out


def compare_markdown(a: dict, b: dict, label_a: str, label_b: str) -> str:
    """Per variant, cells `a → b`: sign accuracy (1 <= |z| <= 6), ECE, share confident (>= 0.8) and wrong, |d| MAE
    (|z| <= 4), before calibration, after (emulated focusd calibrate) and after with the true in-focus slice."""
    out = [f"each cell: {label_a} → {label_b}", ""]
    for when, title in (("before", "before calibration"), ("after", "after calibration (in-focus slice by nvl, as focusd calibrate)"),
                        ("after_true_focus", "after calibration with the stacks' true in-focus slice")):
        out += [f"**{title}**", "", "| variant | sign \\|z\\|≥1 | ECE | conf ≥ 0.8 and wrong | conf ≥ 0.8: share / right | \\|d\\| MAE µm "
                "| \\|d\\| at ±0.5–1.5 µm: bias ± sd / beyond read in / within read out |"
                + (" calibrate sign (5 stacks) |" if when != "before" else ""),
                "|---|---|---|---|---|---|---|" + ("---|" if when != "before" else "")]
        for name in a["variants"]:
            if name not in b["variants"]:
                continue
            ma, mb = a["variants"][name][when], b["variants"][name][when]
            c80 = lambda m: f"{100 * m['conf80_share']:.0f} % / " + ("—" if m["conf80_acc"] is None else f"{100 * m['conf80_acc']:.1f} %")
            row = (f"| {name} | {100 * ma['sign_acc']:.1f} → {100 * mb['sign_acc']:.1f} % | {ma['ece']:.3f} → {mb['ece']:.3f} | "
                   f"{100 * ma['conf80_wrong']:.1f} → {100 * mb['conf80_wrong']:.1f} % | {c80(ma)} → {c80(mb)} | "
                   f"{ma['abs_mae']:.3f} → {mb['abs_mae']:.3f} | {boundary_text(ma.get('boundary'))} → {boundary_text(mb.get('boundary'))} |")
            if when != "before":
                key = "calibrations_true_focus" if when == "after_true_focus" else "calibrations"
                code = lambda v: "".join(c["sign"][0].upper() for c in v[key])
                row += f" {code(a['variants'][name])} → {code(b['variants'][name])} |"
            out.append(row)
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- rendering + inference

@torch.no_grad()
def predict(model, x8: torch.Tensor, bs: int = 32):
    outs = []
    for i in range(0, x8.shape[0], bs):
        a, s, v = model(S.normalise(x8[i:i + bs], S.NORMALISATION))
        outs.append(torch.cat([a, s, v], 1).float())
    o = torch.cat(outs).numpy()
    return o[:, 0], o[:, 1]


class Renderer:
    """Exact PSFs (optics.psf_kernels) per (variant, z), cached; OD sources; render_od(fast) (at most one 8-bit code
    from the exact encode, tests/test_instruments.py)."""

    def __init__(self, optics: O.Optics):
        self.ob1 = O.OpticsBatch.fixed(optics, 1)
        self.cache = {}

    def kernels(self, z: float, b: int):
        if z not in self.cache:
            self.cache[z] = O.psf_kernels(torch.tensor([z], dtype=torch.float64), self.ob1, S.KERNEL)
        return self.cache[z].expand(b, -1, -1, -1)

    def __call__(self, od, z: float, gen):
        b = od.shape[0]
        return S.render_od(od, torch.full((b,), z), self.ob1.take(torch.zeros(b, dtype=torch.long)), gen, S.Variation(),
                           kernels=self.kernels(z, b), fast=True)


def run_variant(model, held, optics, zs, per_z, stack_zs, stack_patches, seed):
    """Evaluation patches and calibration stacks of one variant: (ev, stacks) for one model, or a list of them for a
    list of models (every model sees the very same rendered patches: paired)."""
    models = model if isinstance(model, (list, tuple)) else [model]
    rend = Renderer(optics)
    gen = torch.Generator().manual_seed(seed)  # same crops/noise for every variant and checkpoint
    torch.manual_seed(seed)
    # evaluation patches
    evs = [{"z": [], "abs": [], "logit": [], "img": []} for _ in models]
    for z in zs:
        for i, src in enumerate(held):
            od = S.random_crops([src], per_z, gen, S.Variation(), "cpu", od=True)
            x8 = rend(od, float(z), gen)
            for m, ev in zip(models, evs):
                a, s = predict(m, x8)
                ev["z"] += [float(z)] * per_z
                ev["abs"] += a.tolist()
                ev["logit"] += s.tolist()
                ev["img"] += [i] * per_z
    evs = [{k: np.array(v) for k, v in ev.items()} for ev in evs]
    # calibration stacks: fixed crops per image, every slice
    stacks = [[] for _ in models]
    for src in held:
        od = S.random_crops([src], stack_patches, gen, S.Variation(downscale=(1.0, 1.0)), "cpu", od=True)
        sls = [[] for _ in models]
        for z in stack_zs:
            x8 = rend(od, float(z), gen)
            gray = (0.299 * x8[:, 0] + 0.587 * x8[:, 1] + 0.114 * x8[:, 2]).numpy()
            v = float(np.mean([nvl(g) for g in gray]))
            for m, sl in zip(models, sls):
                a, s = predict(m, x8)
                sl.append({"z": float(z), "abs": float(np.median(a)), "logit": float(np.median(s)), "nvl": v})
        for st, sl in zip(stacks, sls):
            zf = sl[int(np.argmax([x["nvl"] for x in sl]))]["z"]
            st.append({"z_focus": zf, "slices": sl})
    res = list(zip(evs, stacks))
    return res if isinstance(model, (list, tuple)) else res[0]


def evaluate_grid(model, held, variants, per_z=2, z_step=0.5, stack_step=1.0, stack_patches=3, seed=123, log=print):
    """The grid of one model; with `model` a dict {label: model}, {label: grid} for each, on the very same patches."""
    models = model if isinstance(model, dict) else {"": model}
    zs = np.round(np.arange(-6.0, 6.0 + 1e-9, z_step), 3)
    stack_zs = np.round(np.arange(-6.0, 6.0 + 1e-9, stack_step), 3)
    base = {"held_out": [f"{s.path} ({s.stain}, {s.split})" for s in held], "z_grid_um": [-6.0, 6.0, z_step],
           "per_z": per_z, "stack": {"z_step_um": stack_step, "patches_per_slice": stack_patches,
                                     "pairing": "image i calibrated on the stack of image (i+2) mod n"},
           "seed": seed}
    outs = {k: {**base, "variants": {}} for k in models}
    n = len(held)
    for name, optics in variants.items():
        t = time.time()
        for label, (ev, stacks) in zip(models, run_variant(list(models.values()), held, optics, zs, per_z, stack_zs,
                                                           stack_patches, seed)):
            outs[label]["variants"][name] = _variant_result(ev, stacks, held, optics, t, f"{label}: {name}" if label else name, log)
    return outs if isinstance(model, dict) else outs[""]


def _variant_result(ev, stacks, held, optics, t, name, log):
    n = len(held)
    p = 1 / (1 + np.exp(-ev["logit"]))
    before = grid_metrics(ev["z"], np.where(ev["logit"] >= 0, 1.0, -1.0) * ev["abs"], ev["abs"], p)
    def calibrate(true_focus: bool):
        cals = []
        for j, st in enumerate(stacks):
            zf = 0.0 if true_focus else st["z_focus"]
            zr = np.array([x["z"] for x in st["slices"]]) - zf
            m = np.abs(zr) <= 8.0
            cal = fit_calibration(zr[m], np.array([x["abs"] for x in st["slices"]])[m], np.array([x["logit"] for x in st["slices"]])[m])
            cal["z_focus"] = zf
            cals.append(cal)
        sp, pp = np.zeros_like(ev["abs"]), np.zeros_like(p)
        for i in range(n):
            sel = ev["img"] == i
            sp[sel], pp[sel] = apply_calibration(cals[(i + 2) % n], ev["abs"][sel], ev["logit"][sel])
        return grid_metrics(ev["z"], sp, np.abs(sp), pp), cals

    after, cals = calibrate(False)  # in-focus slice by nvl, as focusd calibrate
    after_tf, cals_tf = calibrate(True)  # in-focus slice known (z = 0): the sign/line fit alone
    per_image = {held[i].path: grid_metrics(ev["z"][ev["img"] == i], (np.where(ev["logit"] >= 0, 1.0, -1.0) * ev["abs"])[ev["img"] == i],
                                            ev["abs"][ev["img"] == i], p[ev["img"] == i]) for i in range(n)}
    for v in per_image.values():
        v.pop("reliability")
    res = {"optics": optics.to_dict(), "before": before, "after": after, "after_true_focus": after_tf,
           "calibrations": [{"stack_image": held[j].path, **c} for j, c in enumerate(cals)],
           "calibrations_true_focus": [{"stack_image": held[j].path, **c} for j, c in enumerate(cals_tf)],
           "stacks": stacks, "per_image_before": per_image, "seconds": time.time() - t}
    log(f"{name}: before MAE {before['mae_signed']:.2f} sign {before['sign_acc']:.3f} ECE {before['ece']:.3f} |d| {before['abs_mae']:.2f}"
        f" | after MAE {after['mae_signed']:.2f} sign {after['sign_acc']:.3f} ECE {after['ece']:.3f}"
        f" cal {[c['sign'] for c in cals]} ({time.time() - t:.0f} s)")
    return res


def merge_grids(parts: list, names: list) -> dict:
    """Grid runs split by --variants (the same checkpoints, seed and patches) as one: a single checkpoint's grids, or
    paired runs ({"checkpoints": {path: grid}}) checkpoint by checkpoint."""
    order = list({**I.VARIANTS, **I.EXTRA_VARIANTS})

    def one(ps):
        res = {**ps[0], "variants": {k: v for p in ps for k, v in p["variants"].items()},
               "seconds": sum(p["seconds"] for p in ps), "merged_from": names}
        res["variants"] = {k: res["variants"][k] for k in order if k in res["variants"]}
        return res

    paired = ["checkpoints" in p for p in parts]
    if any(paired) and not all(paired):
        raise SystemExit("eval_grid --merge: paired and single-checkpoint grids cannot be merged together")
    if not all(paired):
        return one(parts)
    cks = list(parts[0]["checkpoints"])
    if any(list(p["checkpoints"]) != cks for p in parts):
        raise SystemExit("eval_grid --merge: the paired grids name different checkpoints")
    return {"checkpoints": {c: one([p["checkpoints"][c] for p in parts]) for c in cks}, "paired": True}


def grids_markdown(res: dict) -> str:
    """One grid's tables, or for paired grids each checkpoint's and a comparison of the first with each other."""
    if "checkpoints" not in res:
        return markdown(res)
    grids = res["checkpoints"]
    first, *rest = list(grids)
    return "\n\n".join([f"## {c}\n\n{markdown(r)}" for c, r in grids.items()] +
                        [f"## {Path(first).name} vs {Path(c).name}\n\n{compare_markdown(grids[first], grids[c], Path(first).name, Path(c).name)}"
                         for c in rest])


def grid_images(root: Path, which: str) -> list:
    """The images a grid is rendered from: the held-out ones, or the training images held back for calibration."""
    if which == "heldout":
        return S.load_sources(root, set(HELD_OUT))
    from sign_head import CALIBRATION_IMAGES
    srcs = [s for s in S.load_sources(root, {"train"}) if s.path in CALIBRATION_IMAGES]
    if len(srcs) != len(CALIBRATION_IMAGES):
        raise SystemExit(f"eval_grid --images calibration: found {len(srcs)} of {len(CALIBRATION_IMAGES)} images under {root}")
    return srcs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", nargs="+", help="one checkpoint, or several evaluated on the very same patches")
    ap.add_argument("--merge", nargs="+", help="merge the variants of these grid JSONs (runs split by --variants) into --out")
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", help="also write the before/after tables as markdown here")
    ap.add_argument("--per-z", type=int, default=3)
    ap.add_argument("--stack-step", type=float, default=1.0)
    ap.add_argument("--stack-patches", type=int, default=3)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--variants", default=",".join(I.VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--images", choices=("heldout", "calibration"), default="heldout",
                    help="heldout: the 5 held-out images (the grid's test data); calibration: the 3 training images "
                         "held back from the heads' fits (sign_head.CALIBRATION_IMAGES), to choose a setting without "
                         "looking at the held-out tissue")
    a = ap.parse_args(argv)
    if a.merge:
        res = merge_grids([json.loads(Path(p).read_text()) for p in a.merge], a.merge)
        Path(a.out).write_text(json.dumps(res, indent=1))
        md = grids_markdown(res)
        if a.md:
            Path(a.md).write_text(md)
        print(md)
        return
    if not a.checkpoint:
        ap.error("--checkpoint or --merge")
    torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from evaluate import load_checkpoint
    models = {c: load_checkpoint(c)[0] for c in a.checkpoint}
    root = Path(a.data_root) if a.data_root else S.default_data_root()
    held = S.with_od(grid_images(root, a.images))
    t = time.time()
    grids = evaluate_grid(models, held, {k: {**I.VARIANTS, **I.EXTRA_VARIANTS}[k] for k in a.variants.split(",")}, a.per_z, 0.5, a.stack_step,
                          a.stack_patches, a.seed, log=lambda s: print(s, flush=True))
    machine = f"CPU, {a.threads} torch thread(s), nice, shared 2-core dev box; load avg at end {os.getloadavg()}"
    for c, res in grids.items():
        res["checkpoint"] = c
        res["seconds"] = time.time() - t  # all checkpoints together (they share the rendering)
        res["machine"] = machine
    # several checkpoints, the same patches: {"checkpoints": {path: grid}}
    res = grids[a.checkpoint[0]] if len(grids) == 1 else {"checkpoints": grids, "paired": True}
    Path(a.out).write_text(json.dumps(res, indent=1))
    md = grids_markdown(res)
    if a.md:
        Path(a.md).write_text(md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
