"""Metrics of the daemon's own scorers on held-out tiles (make_eval_tiles.py), from `focusd score` JSON lines.

  /usr/bin/python3 models/training/make_eval_tiles.py --out T --glass 30
  focusd score --pixel-size 0.22 --scorer cnn T/*.png > cnn.jsonl
  focusd score --pixel-size 0.22 --scorer classical T/*.png > classical.jsonl
  /usr/bin/python3 models/training/score_metrics.py --tiles T --scored cnn=cnn.jsonl --scored classical=classical.jsonl

Same metric definitions as evaluate.py (signed = defocus_um as the scorer reports it), plus the Spearman rank
correlation of |defocus| against |z|, the verdict accuracy at the ±1 µm tolerance (a tissue tile called no_tissue
counts as wrong) and, for the glass and tissue-rim tiles, the share called no_tissue.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate import metrics as patch_metrics  # noqa: E402

TOLERANCE_UM = 1.0
# controller.signConfidence default (config/sections/controller.ts): below it the controller probes instead of
# trusting the sign, so a wrong sign below it costs a probe, not a move in the wrong direction
SIGN_CONFIDENCE = 0.8


def load_scored(path: Path) -> dict:
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[Path(r["file"]).name] = r
    return rows


def scorer_metrics(truth: list[dict], scored: dict) -> dict:
    missing = [t["file"] for t in truth if t["file"] not in scored]
    if missing:
        raise SystemExit(f"{len(missing)} tiles have no score, e.g. {missing[0]}")
    tissue = [t for t in truth if not math.isnan(t["z"])]
    empty = [t for t in truth if math.isnan(t["z"])]
    verdicts = [scored[t["file"]]["verdict"] for t in tissue]
    want = ["in_focus" if abs(t["z"]) <= TOLERANCE_UM else "out_of_focus" for t in tissue]
    ok = [(t["z"], scored[t["file"]]) for t in tissue if scored[t["file"]]["defocus_um"] is not None]
    z = np.array([zt for zt, _ in ok], dtype=float)
    d = np.array([s["defocus_um"] for _, s in ok], dtype=float)
    conf = np.array([s["sign_confidence"] if s["sign_confidence"] is not None else 0.5 for _, s in ok], dtype=float)
    # evaluate.metrics wants |d| and a sign logit; a scorer without a sign (confidence 0.5) reports d >= 0
    m = patch_metrics(z, np.abs(d), np.where(d >= 0, 1.0, -1.0))
    m["n_tiles"] = len(tissue)
    m["scored"] = len(ok)
    m["called_no_tissue"] = int(sum(v == "no_tissue" for v in verdicts))
    m["has_sign"] = bool(np.any(np.abs(conf - 0.5) > 1e-9))
    if not m["has_sign"]:
        m["sign_acc_abs_z_ge_1"] = None  # a scorer without a sign has no sign accuracy (its signed metrics use d >= 0)
    else:
        far = (np.abs(z) >= 1.0) & (np.abs(z) <= 6.0)
        sure = far & (conf >= SIGN_CONFIDENCE)
        m["sign_confident_share_abs_z_ge_1"] = float(np.mean(sure[far])) if far.any() else None
        m["sign_acc_confident_abs_z_ge_1"] = float(np.mean((d[sure] >= 0) == (z[sure] > 0))) if sure.any() else None
        m["wrong_sign_confident"] = int(np.sum(sure & ((d >= 0) != (z > 0))))
    m["spearman_abs"] = float(spearmanr(np.abs(d), np.abs(z)).correlation)
    m["verdict_acc"] = float(np.mean([v == w for v, w in zip(verdicts, want)]))
    # the costly errors for a scanner: an in-focus tile re-acquired, an out-of-focus tile kept
    m["false_out_of_focus"] = int(sum(v == "out_of_focus" and w == "in_focus" for v, w in zip(verdicts, want)))
    m["missed_out_of_focus"] = int(sum(v == "in_focus" and w == "out_of_focus" for v, w in zip(verdicts, want)))
    # tiles exactly at the tolerance (|z| = 1 µm on a 1 µm grid) are a coin flip for any scorer: also without them
    clear = [abs(abs(t["z"]) - TOLERANCE_UM) > 0.25 for t in tissue]
    m["verdict_acc_away_from_tolerance"] = float(np.mean([v == w for v, w, c in zip(verdicts, want, clear) if c]))
    m["verdict_acc_scored"] = float(np.mean([v == w for v, w in zip(verdicts, want) if v != "no_tissue"]))
    for kind in ("glass", "rim"):
        ks = [t for t in empty if t["source"] == kind]
        if ks:
            m[f"{kind}_no_tissue_rate"] = float(np.mean([scored[t["file"]]["verdict"] == "no_tissue" for t in ks]))
            m[f"{kind}_n"] = len(ks)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def stack_metrics(stack: Path, scored: dict, report: dict | None, fit_range_um: float) -> dict:
    """Spearman of |defocus| against |z - z_focus| on a real focus stack (z_focus per position from a calibration
    report, else 0), over all slices and within the model's range."""
    with open(stack / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    zf = {}
    if report:
        zf = {k: v["z_focus_um"] for k, v in report["in_focus"].items()}
    rel, d = [], []
    for r in rows:
        s = scored.get(r["file"])
        if s is None or s["defocus_um"] is None:
            continue
        rel.append(float(r["z_um"]) - zf.get(f"ix{int(r['ix'])}_iy{int(r['iy'])}", 0.0))
        d.append(abs(s["defocus_um"]))
    rel, d = np.abs(np.array(rel)), np.array(d)
    m = rel <= fit_range_um
    return {"slices": int(len(rows)), "scored": int(len(d)),
            "spearman_abs_all": round(float(spearmanr(d, rel).correlation), 4),
            "spearman_abs_in_range": round(float(spearmanr(d[m], rel[m]).correlation), 4), "in_range_n": int(m.sum()),
            "range_um": fit_range_um}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", help="directory written by make_eval_tiles.py (manifest.csv)")
    ap.add_argument("--scored", action="append", required=True, help="NAME=FILE.jsonl from `focusd score` (repeatable)")
    ap.add_argument("--stack", help="instead of --tiles: a real focus stack directory (manifest.csv with file,ix,iy,z_um)")
    ap.add_argument("--stack-report", help="calibration-report.json of `focusd calibrate` on that stack (in-focus z)")
    ap.add_argument("--range-um", type=float, default=8.0, help="stack: the model's range for the in-range Spearman")
    ap.add_argument("--out", help="write the JSON here as well")
    a = ap.parse_args(argv)
    if a.stack:
        report = json.loads(Path(a.stack_report).read_text()) if a.stack_report else None
        res = {"stack": a.stack}
        for item in a.scored:
            name, _, path = item.partition("=")
            res[name] = stack_metrics(Path(a.stack), load_scored(Path(path)), report, a.range_um)
        text = json.dumps(res, indent=1)
        if a.out:
            Path(a.out).write_text(text + "\n")
        print(text)
        return
    if not a.tiles:
        ap.error("--tiles or --stack")
    with open(Path(a.tiles) / "manifest.csv") as f:
        truth = [{"file": r["file"], "z": float(r["z_um"]), "source": r["source"], "stain": r["stain"]} for r in csv.DictReader(f)]
    res = {"tiles": str(a.tiles), "tolerance_um": TOLERANCE_UM}
    for item in a.scored:
        name, _, path = item.partition("=")
        res[name] = scorer_metrics(truth, load_scored(Path(path)))
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
