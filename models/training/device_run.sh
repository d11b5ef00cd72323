#!/usr/bin/env bash
# One GPU session: train compact CNN variants and the published InceptionV3+6FC side by side, then evaluate all.
# Usage (on a CUDA machine, data copied to .devdata/infocus): OUT=/path MINUTES=5.5 bash models/training/device_run.sh
set -u
OUT=${OUT:-models/training/runs}
MINUTES=${MINUTES:-5.5}
VARIANTS=${VARIANTS-"fn16:--width 16 fn24:--width 24 fn16d2:--width 16 --depth 2"}
INCEPTION=${INCEPTION:-1}
export FOCUSD_INFOCUS_DIR=${FOCUSD_INFOCUS_DIR:-.devdata/infocus}
PY=""
for p in python3 /usr/bin/python3 python; do
  if $p -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then PY=$p; break; fi
done
nvidia-smi -L || true
if [ -z "$PY" ]; then echo "no python with CUDA torch"; for p in python3 /usr/bin/python3; do $p -c "import torch; print(torch.__version__)"; done; exit 3; fi
$PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
$PY -c "import torchvision; print('torchvision', torchvision.__version__)" || echo "no torchvision (local InceptionV3 definition used)"
mkdir -p "$OUT"
T=models/training
pids=()
# launch compact variants
echo "$VARIANTS" | sed 's/ fn/\nfn/g' > /tmp/variants.txt
while IFS= read -r line; do
  [ -z "$line" ] && continue
  [ -z "$line" ] && continue
  name=${line%%:*}; args=${line#*:}
  mkdir -p "$OUT/$name"
  $PY $T/train.py --arch focusnet $args --batch ${BATCH:-64} --lr 2e-3 --minutes "$MINUTES" --seed 1 --out "$OUT/$name" > "$OUT/$name/train.out" 2>&1 &
  pids+=($!)
done < /tmp/variants.txt
if [ "$INCEPTION" = 1 ]; then
  mkdir -p /tmp/incv3 "$OUT/incv3"
  $PY $T/train.py --arch inceptionv3 --batch 48 --lr 5e-4 --amp --minutes "$MINUTES" --seed 1 --out /tmp/incv3 > "$OUT/incv3/train.out" 2>&1 &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; echo "train pid $p rc $?"; done
pids=()
while IFS= read -r line; do
  [ -z "$line" ] && continue
  [ -z "$line" ] && continue
  name=${line%%:*}
  $PY $T/evaluate.py --checkpoint "$OUT/$name/checkpoint.pt" --out "$OUT/$name/eval.json" --bench > "$OUT/$name/eval.out" 2>&1 &
  pids+=($!)
done < /tmp/variants.txt
if [ "$INCEPTION" = 1 ]; then
  cp /tmp/incv3/train_log.json "$OUT/incv3/" || true
  $PY $T/evaluate.py --checkpoint /tmp/incv3/checkpoint.pt --out "$OUT/incv3/eval.json" --per-z ${PER_Z:-8} --bench > "$OUT/incv3/eval.out" 2>&1 &
  pids+=($!)
fi
for item in ${EXTRA_EVAL:-}; do
  name=${item%%:*}; ck=${item#*:}
  mkdir -p "$OUT/$name"
  $PY $T/evaluate.py --checkpoint "$ck" --out "$OUT/$name/eval.json" > "$OUT/$name/eval.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "eval pid $p rc $?"; done
for f in "$OUT"/*/eval.out; do echo "== $f"; cat "$f"; done
for f in "$OUT"/*/train.out; do echo "== $f"; tail -n 3 "$f"; done
# the device tool returns few files: pack everything small into one archive
(cd "$OUT" && tar czf /tmp/results.tgz --exclude='*.tgz' . && rm -rf ./* && mv /tmp/results.tgz .)
