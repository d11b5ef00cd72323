#!/usr/bin/env bash
# One GPU session: train model variants side by side on one GPU, then evaluate each on the held-out set.
# Usage (on a CUDA machine; the in-focus sources under .devdata/infocus or $FOCUSD_INFOCUS_DIR):
#   OUT=/path MINUTES=7 bash models/training/device_run.sh
#   VARIANTS="name:train.py args;name2:args"   (';'-separated; default: the shipped focusnet-w32d2 without and with
#                                              stain augmentation, the comparison in models/README.md)
#   EXTRA_EVAL="name:checkpoint ..."           evaluate existing checkpoints too (e.g. the model being replaced)
#   INCEPTION=1                                 also train the published InceptionV3 + 6 FC (checkpoint kept in /tmp:
#                                              too large to bring back), evaluated on the GPU
# Checkpoints are written every minute (atomically), so a run cut off by the lender's wall clock still returns models.
set -u
OUT=${OUT:-models/training/runs}
MINUTES=${MINUTES:-7}
VARIANTS=${VARIANTS-"fn32d2:--width 32 --depth 2 --batch 96;fn32d2-stainaug:--width 32 --depth 2 --batch 96 --stain-aug"}
INCEPTION=${INCEPTION:-0}
PER_Z=${PER_Z:-8}
export FOCUSD_INFOCUS_DIR=${FOCUSD_INFOCUS_DIR:-.devdata/infocus}
PY=${PY:-}  # set PY to skip the CUDA check (a dry run of this script on a CPU machine)
[ -n "$PY" ] || for p in python3 /usr/bin/python3 python; do
  if $p -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then PY=$p; break; fi
done
nvidia-smi -L || true
if [ -z "$PY" ]; then echo "no python with CUDA torch"; for p in python3 /usr/bin/python3; do $p -c "import torch; print(torch.__version__)"; done; exit 3; fi
$PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
ls "$FOCUSD_INFOCUS_DIR" >/dev/null || exit 4
mkdir -p "$OUT"
T=models/training
names=()
pids=()
IFS=';' read -ra items <<< "$VARIANTS"
for line in "${items[@]}"; do
  [ -z "$line" ] && continue
  name=${line%%:*}; args=${line#*:}
  names+=("$name")
  mkdir -p "$OUT/$name"
  # shellcheck disable=SC2086  # args is a word list on purpose
  # defaults first, the variant's own args last: argparse keeps the last value, so a variant's --lr wins (before
  # 2026-12 the default came last and silently overrode it: 0.2.0's continued step ran at 2e-3, not its 5e-4)
  $PY $T/train.py --arch focusnet --lr 2e-3 --seed 1 $args --minutes "$MINUTES" --out "$OUT/$name" > "$OUT/$name/train.out" 2>&1 &
  pids+=($!)
done
if [ "$INCEPTION" = 1 ]; then
  mkdir -p /tmp/incv3 "$OUT/incv3"
  $PY $T/train.py --arch inceptionv3 --batch 48 --lr 5e-4 --amp --minutes "$MINUTES" --seed 1 --out /tmp/incv3 > "$OUT/incv3/train.out" 2>&1 &
  pids+=($!)
fi
(sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv > "$OUT/gpu_util.txt") &
for p in "${pids[@]}"; do wait "$p"; echo "train pid $p rc $?"; done
# AFTER_TRAIN: a command run once the models are trained, before they are evaluated (gpu_session.sh packs them, so a
# call cut off at its limit during evaluation still brings the models back); EVAL_TIMEOUT: seconds per evaluation
[ -n "${AFTER_TRAIN:-}" ] && bash -c "$AFTER_TRAIN"
EVAL=${EVAL_TIMEOUT:+timeout $EVAL_TIMEOUT}
pids=()
for name in "${names[@]}"; do
  $EVAL $PY $T/evaluate.py --checkpoint "$OUT/$name/checkpoint.pt" --out "$OUT/$name/eval.json" --per-z "$PER_Z" --bench > "$OUT/$name/eval.out" 2>&1 &
  pids+=($!)
done
if [ "$INCEPTION" = 1 ]; then
  cp /tmp/incv3/train_log.json "$OUT/incv3/" || true
  $EVAL $PY $T/evaluate.py --checkpoint /tmp/incv3/checkpoint.pt --out "$OUT/incv3/eval.json" --per-z "$PER_Z" --bench > "$OUT/incv3/eval.out" 2>&1 &
  pids+=($!)
fi
for item in ${EXTRA_EVAL:-}; do  # "name:checkpoint ..." evaluated beside the new ones (e.g. the model they replace)
  name=${item%%:*}; ck=${item#*:}
  mkdir -p "$OUT/$name"
  $EVAL $PY $T/evaluate.py --checkpoint "$ck" --out "$OUT/$name/eval.json" --per-z "$PER_Z" > "$OUT/$name/eval.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "eval pid $p rc $?"; done
for f in "$OUT"/*/eval.out; do echo "== $f"; cat "$f"; done
for f in "$OUT"/*/train.out; do echo "== $f"; tail -n 2 "$f"; done
