#!/usr/bin/env bash
# Every GPU measurement of the project in one run (<= 7 minutes on one H100), for the device
# machine (torch + Lightning + numpy + pandas, no network, no prefect/mlflow/dvc):
#   1. data stages on Tiny Shakespeare from the carried copy (gpu_carry/tinyshakespeare.txt)
#   2. bench/train_step.py --device cuda: the project's step vs the plain loop (3x512, B128 T128, bf16);
#      bench/cell_speed.py --device cuda: the equation cells against cuDNN (one layer H512 B128 T128)
#   3. the gpu preset through the project's own entry point (python -m pipeline.train, tracking off):
#      val_loss against training seconds (targets: <= 1.47 within 20 s, <= 1.40 within 120 s)
#   4. the anchor scripts (../shared/bench, carried in gpu_carry/), in the same call
#   5. a GPU checkpoint loaded and sampled on the CPU
#   6. sampling speed, batch 1 and 256 streams (bench/sample_speed.py)
# Prepare here: mkdir -p gpu_carry && cp ../shared/corpora/tinyshakespeare.txt ../shared/bench/anchor_*_gpu.py gpu_carry/
# Run there (carry gpu_carry):  bash bench/gpu_check.sh [--quick]   (--quick also runs on a CPU, to check the script)
# Writes JSON to $OUT (or bench/out) and prints a table last.
set -euo pipefail
QUICK=""; [ "${1:-}" = "--quick" ] && QUICK="--quick"
REPO="$PWD"
OUT="${OUT:-$REPO/bench/out}"; mkdir -p "$OUT"
# work in a scratch copy: the project's DVC-tracked data/, models/ and plots/ stay untouched
WORK="$(mktemp -d)"; cp -r pipeline lightning_modules bench params.yaml gpu_carry "$WORK"/; cd "$WORK"
export CORPUS_MIRROR="$WORK/gpu_carry" PYTHONPATH="$WORK"
PY="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for s in download tokenize onehot; do $PY -m pipeline.$s tinyshakespeare; done
DEV=cpu; $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" && DEV=cuda
$PY bench/train_step.py --device $DEV $QUICK | tee "$OUT/train_step.md"
cp bench/out/train_step_$DEV.json "$OUT/" 2>/dev/null || true
$PY bench/cell_speed.py --device $DEV $QUICK | tee "$OUT/cell_speed.md"
cp bench/out/cell_speed_$DEV.json "$OUT/" 2>/dev/null || true
$PY bench/sample_speed.py --device $DEV | tee "$OUT/sample_speed.md"
STEPS=3000; [ -n "$QUICK" ] && STEPS=20
PRESET="--set preset=gpu"; [ "$DEV" = cpu ] && PRESET="--set train.hidden=64 --set train.layers=1 --set train.batch_size=8"
timeout 300 $PY -m pipeline.train tinyshakespeare $PRESET --set tracking.enabled=false --set train.max_steps=$STEPS \
  --set train.val_every=$([ -n "$QUICK" ] && echo 10 || echo 125) | tee "$OUT/gpu_preset.log" || echo "gpu preset run stopped (timeout or error)"
cp plots/tinyshakespeare/val_loss.csv "$OUT/gpu_preset_val_loss.csv" 2>/dev/null || true
if [ -f gpu_carry/anchor_lstm_gpu.py ]; then
  $PY gpu_carry/anchor_lstm_gpu.py gpu_carry/tinyshakespeare.txt --budget-s $([ -n "$QUICK" ] && echo 10 || echo 100) $QUICK --out "$OUT/anchor_lstm.json" | tail -20
fi
if [ -f gpu_carry/anchor_limits_gpu.py ]; then
  $PY gpu_carry/anchor_limits_gpu.py gpu_carry/tinyshakespeare.txt $QUICK --out "$OUT/anchor_limits.json" | tail -20
fi
$PY - <<'PY'
import torch
from lightning_modules.checkpoint import load_checkpoint
from lightning_modules.sampling import generate
m, v, _ = load_checkpoint("models/tinyshakespeare/best.ckpt", map_location="cpu")
print("GPU checkpoint sampled on the CPU:", repr(generate(m, v, "ROMEO:", 60, seed=0)[0][:70]))
PY
echo "== summary"; cat "$OUT/train_step.md" "$OUT/cell_speed.md" "$OUT/sample_speed.md"
echo "gpu preset, val_loss against seconds (step,val_loss,val_bpc,wall_s,train_s):"; cat "$OUT/gpu_preset_val_loss.csv" 2>/dev/null || true
