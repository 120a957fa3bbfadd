#!/usr/bin/env bash
# Every GPU measurement of the project in one run (about 7 minutes on one H100), for the device
# machine (torch + Lightning + numpy + pandas, no network, no prefect/mlflow/dvc):
#   1. data stages on Tiny Shakespeare from the carried copy (gpu_carry/tinyshakespeare.txt)
#   2. bench/train_step.py --device cuda: the project's step vs the plain loop (3x512, B128 T128, bf16)
#   3. bench/cell_speed.py --device cuda: the equation cells (Triton kernels; + CUDA graph rows)
#      against cuDNN, one layer H512 B128 T128, fp32/TF32 and bf16, each checked against the loop
#   4. bench/sample_speed.py --device cuda: batch 1 (chunks of 32 tokens as CUDA graphs) and 256 streams
#   5. the gpu preset through the project's own entry point (python -m pipeline.train, tracking off):
#      val_loss against training seconds (targets: <= 1.47 within 20 s, <= 1.40 within 120 s)
#   6. the anchor script ../shared/bench/anchor_lstm_gpu.py (carried in gpu_carry/) in the same call;
#      anchor_limits_gpu.py too when ANCHOR_LIMITS=1 (about 2.5 more minutes)
#   7. a GPU checkpoint loaded and sampled on the CPU
# Every step has its own time limit and writes to $OUT as it goes; the summary prints last
# (also when a step fails or the run is cut off early).
# Prepare here: mkdir -p gpu_carry && cp ../shared/corpora/tinyshakespeare.txt ../shared/bench/anchor_*_gpu.py gpu_carry/
# Run there (carry gpu_carry):  bash bench/gpu_check.sh [--quick]   (--quick also runs on a CPU, to check the script)
set -uo pipefail
QUICK=""; [ "${1:-}" = "--quick" ] && QUICK="--quick"
REPO="$PWD"
OUT="${OUT:-$REPO/bench/out}"; mkdir -p "$OUT"
T0=$(date +%s)
summary() {
  echo "== summary ($(( $(date +%s) - T0 )) s)"
  cat "$OUT/gpu.txt" "$OUT/train_step.md" "$OUT/cell_speed.md" "$OUT/sample_speed.md" 2>/dev/null
  echo "gpu preset, val_loss against seconds (step,val_loss,val_bpc,wall_s,train_s):"; cat "$OUT/gpu_preset_val_loss.csv" 2>/dev/null
  grep -h "FAILED\|Error\|error:" "$OUT"/*.md "$OUT"/*.log 2>/dev/null | head -20
}
trap summary EXIT
trap "exit 143" TERM INT
# work in a scratch copy: the project's DVC-tracked data/, models/ and plots/ stay untouched
WORK="$(mktemp -d)"; cp -r pipeline lightning_modules bench params.yaml gpu_carry "$WORK"/; cd "$WORK"
export CORPUS_MIRROR="$WORK/gpu_carry" PYTHONPATH="$WORK" TRITON_DEFAULT_FP_FUSION=1
PY="${PYTHON:-python}"
step() { local limit=$1 name=$2; shift 2; echo "== $name (limit ${limit}s)"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; local rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || echo "FAILED $name: exit $rc" | tee -a "$OUT/$name.log"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, lightning; import importlib.util as u; print('torch', torch.__version__, 'lightning', lightning.__version__, 'triton', u.find_spec('triton') is not None)" | tee -a "$OUT/gpu.txt"
for s in download tokenize onehot; do $PY -m pipeline.$s tinyshakespeare || exit 1; done
DEV=cpu; $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" && DEV=cuda
step 120 train_step $PY bench/train_step.py --device $DEV $QUICK; grep "^|" "$OUT/train_step.log" > "$OUT/train_step.md"
step 150 cell_speed $PY bench/cell_speed.py --device $DEV $QUICK; grep "^|\|^equation\|^same\|^FAILED" "$OUT/cell_speed.log" > "$OUT/cell_speed.md"
step 90 sample_speed $PY bench/sample_speed.py --device $DEV $([ -n "$QUICK" ] && echo "--length 50"); grep "^|" "$OUT/sample_speed.log" > "$OUT/sample_speed.md"
cp bench/out/*.json "$OUT/" 2>/dev/null
STEPS=3000; [ -n "$QUICK" ] && STEPS=20
PRESET="--set preset=gpu"; [ "$DEV" = cpu ] && PRESET="--set train.hidden=64 --set train.layers=1 --set train.batch_size=8"
step 200 gpu_preset $PY -m pipeline.train tinyshakespeare $PRESET --set tracking.enabled=false --set train.max_steps=$STEPS \
  --set train.val_every=$([ -n "$QUICK" ] && echo 10 || echo 125)
cp plots/tinyshakespeare/val_loss.csv "$OUT/gpu_preset_val_loss.csv" 2>/dev/null
if [ -f gpu_carry/anchor_lstm_gpu.py ]; then
  step 150 anchor_lstm $PY gpu_carry/anchor_lstm_gpu.py gpu_carry/tinyshakespeare.txt --budget-s $([ -n "$QUICK" ] && echo 5 || echo 40) $QUICK --out "$OUT/anchor_lstm.json"
fi
if [ -f gpu_carry/anchor_limits_gpu.py ] && [ "${ANCHOR_LIMITS:-0}" = 1 ]; then
  step 200 anchor_limits $PY gpu_carry/anchor_limits_gpu.py gpu_carry/tinyshakespeare.txt $QUICK --out "$OUT/anchor_limits.json"
fi
step 60 cpu_sample $PY -c '
from lightning_modules.checkpoint import load_checkpoint
from lightning_modules.sampling import generate
m, v, _ = load_checkpoint("models/tinyshakespeare/best.ckpt", map_location="cpu")
print("GPU checkpoint sampled on the CPU:", repr(generate(m, v, "ROMEO:", 60, seed=0)[0][:70]))'
