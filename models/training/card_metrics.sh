#!/usr/bin/env bash
# The model card's daemon-side numbers for a bundle, from commands a reader can rerun (CPU only, ~5 min on 2 cores):
#   - held-out tiles (make_eval_tiles.py, shifted optics, seeded) through `focusd score`, CNN and classical side by side,
#     one patch per tile (as the published per-patch numbers) and 768x768 tiles (the daemon aggregates 8-9 patches);
#   - glass/dust and tissue-rim tiles: share called no_tissue;
#   - CPU latency per 320x320 patch in onnxruntime-node, 1 and 2 threads;
#   - the real focus stack: `focusd calibrate` (in-focus slice, fit, sign test) and Spearman of |defocus| vs |z|.
#   - with CHECKPOINT=path (the bundle's PyTorch checkpoint): the in-distribution check on the training images
#     (evaluate.py --training-images, ~5 min more on 2 cores), the published model's kind of validation.
# Usage: bash models/training/card_metrics.sh BUNDLE_DIR WORK_DIR   -> WORK_DIR/extra.json (export_onnx.py --extra-metrics)
# Needs a built dist/ (npm run build), /usr/bin/python3 with torch, the in-focus sources and (optional) the stack.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${1:?bundle dir}
W=${2:?work dir}
STACK=${FOCUSD_STACK_DIR:-../shared/data/focus-stacks/evanmacbride-level1}
PY=/usr/bin/python3
T=models/training
FOCUSD="node bin/focusd.js"
mkdir -p "$W"

echo "== held-out tiles" >&2
$PY $T/make_eval_tiles.py --out "$W/tiles" --glass 30 >&2
$FOCUSD score --pixel-size 0.22 --scorer cnn --model "$BUNDLE" "$W"/tiles/*.png > "$W/cnn.jsonl"
$FOCUSD score --pixel-size 0.22 --scorer classical "$W"/tiles/*.png > "$W/classical.jsonl"
$PY $T/score_metrics.py --tiles "$W/tiles" --scored cnn="$W/cnn.jsonl" --scored classical="$W/classical.jsonl" --out "$W/daemon.json" >/dev/null

echo "== held-out 768x768 tiles (several patches each, as a scanner's tiles)" >&2
$PY $T/make_eval_tiles.py --out "$W/tiles768" --tile-px 768 --per-z 2 >&2
$FOCUSD score --pixel-size 0.22 --scorer cnn --model "$BUNDLE" "$W"/tiles768/*.png > "$W/cnn768.jsonl"
$FOCUSD score --pixel-size 0.22 --scorer classical "$W"/tiles768/*.png > "$W/classical768.jsonl"
$PY $T/score_metrics.py --tiles "$W/tiles768" --scored cnn="$W/cnn768.jsonl" --scored classical="$W/classical768.jsonl" --out "$W/daemon768.json" >/dev/null

echo "== CPU latency" >&2
node scripts/bench-model-latency.mjs "$BUNDLE" 500 > "$W/latency.json"

if [ -d "$STACK" ]; then
  echo "== focus stack $STACK" >&2
  px=0.286  # the stack's JSON sidecars: ≈549 µm over 1920 px
  $FOCUSD calibrate "$STACK" --model "$BUNDLE" --out "$W/calibrated" > "$W/calibrate.out"
  $FOCUSD score --pixel-size $px --scorer cnn --model "$BUNDLE" "$STACK"/*.png > "$W/stack-cnn.jsonl"
  $FOCUSD score --pixel-size $px --scorer cnn --model "$W/calibrated" "$STACK"/*.png > "$W/stack-cnn-cal.jsonl"
  $FOCUSD score --pixel-size $px --scorer classical "$STACK"/*.png > "$W/stack-classical.jsonl"
  $PY $T/score_metrics.py --stack "$STACK" --stack-report "$W/calibrated/calibration-report.json" \
    --scored cnn="$W/stack-cnn.jsonl" --scored cnn_calibrated="$W/stack-cnn-cal.jsonl" \
    --scored classical="$W/stack-classical.jsonl" --out "$W/stack.json" >/dev/null
fi

if [ -n "${CHECKPOINT:-}" ]; then
  echo "== in-distribution check on the training images" >&2
  $PY $T/evaluate.py --checkpoint "$CHECKPOINT" --out "$W/eval-training-images.json" --device cpu --per-z 4 --training-images >/dev/null
fi

$PY - "$W" "$(uname -m)" "$(nproc)" <<'EOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
d = json.loads((w / "daemon.json").read_text())
d768 = json.loads((w / "daemon768.json").read_text())
lat = json.loads((w / "latency.json").read_text())
cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
extra = {
    "cpu_latency_ms_per_patch": {"machine": f"{cpu}, {sys.argv[3]} CPUs ({sys.argv[2]}), node {lat['node']}, batch 1",
                                 "command": "node scripts/bench-model-latency.mjs BUNDLE 500",
                                 "threads_1_median": lat["threads_1"]["median_ms"], "threads_1_p90": lat["threads_1"]["p90_ms"],
                                 "threads_2_median": lat["threads_2"]["median_ms"]},
    "daemon_path_eval": {"what": "make_eval_tiles.py held-out tiles (shifted optics) through `focusd score --scorer cnn|classical "
                                 "--pixel-size 0.22`; models/training/card_metrics.sh", "cnn": d["cnn"], "classical": d["classical"]},
    "daemon_path_eval_768px_tiles": {"what": "make_eval_tiles.py --tile-px 768 --per-z 2: held-out 768x768 tiles (shifted optics), "
                                         "8-9 patches each aggregated by the daemon; models/training/card_metrics.sh",
                                         "cnn": d768["cnn"], "classical": d768["classical"]},
    "no_tissue_daemon_detector": {k: d["cnn"][k] for k in ("glass_no_tissue_rate", "glass_n", "rim_no_tissue_rate", "rim_n") if k in d["cnn"]},
}
if (w / "stack.json").exists():
    rep = json.loads((w / "calibrated" / "calibration-report.json").read_text())
    extra["real_focus_stack"] = {
        "stack": rep["stack"].rstrip("/").split("/")[-1], "note": "reflected-light metal pads, not tissue: out of the model's domain",
        "in_focus_slice": rep["in_focus"], "calibration_fit": rep["fit"], "sign_test": rep["sign"],
        "calibrate_spearman_abs_in_range": rep["spearman_abs_in_range"], "calibrate_spearman_abs_all": rep["spearman_abs_all"],
        "focusd_score": json.loads((w / "stack.json").read_text()),
    }
if (w / "eval-training-images.json").exists():
    e = json.loads((w / "eval-training-images.json").read_text())
    keys = ("n", "mae_um_abs_z_le_4", "r2", "fit_slope", "fit_intercept", "within_1um", "sign_acc_abs_z_ge_1", "abs_mae_um_z_le_4", "abs_r2")
    extra["in_distribution_training_images"] = {
        "what": "NOT held out: the 13 training images, new crops/noise/optics draws, per-z 4 on CPU (evaluate.py "
                "--training-images); the published model's kind of validation",
        **{o: {k: round(e[o][k], 4) for k in keys} for o in ("shifted_optics", "default_optics")}}
(w / "extra.json").write_text(json.dumps(extra, indent=1) + "\n")
print(json.dumps(extra, indent=1))
EOF
