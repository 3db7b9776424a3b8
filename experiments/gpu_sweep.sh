#!/usr/bin/env bash
# The precision sweep on one GPU, sized to finish in about 5 minutes on one H200.
#
# What it runs (device=cuda, SGD momentum 0.9, lr 0.05, batch 128, TF32 off, one run at a time
# in one process so that timings are not shared with other runs and CUDA starts once):
#   1. MNIST (60000 train / 10000 test idx files): mlp, lenet5 x 5 modes x 2 seeds, 3 epochs
#   2. CIFAR-10 (the cifar10_train_*.npz found, exact first 1000 test images): resnet20,
#      vgg_small, vit_tiny x 5 modes x 2 seeds, 5 epochs
#   3. Adam's epsilon on CIFAR-10 resnet20: fp32 / amp-fp16 / fp16 with eps 1e-8 and 1e-4, seed 0
# Modes: fp32, amp-fp16, fp16 (pure, no loss scaling, as the seed paper), bf16 (pure), amp-bf16.
# Each sweep has a deadline (--max_minutes); whatever is left is reported "not started" and a
# second call of this script resumes (finished runs are skipped).
#
# Data: point FPA_DATA at a folder holding mnist/ (the four idx .gz files) and cifar10/
# (cifar10_train_1.npz [+ _2] and cifar10_test_first1000_exact.npz), e.g. prepared in the repo
# root and ignored by git so it can travel with the device tool's `carry` (64 MiB limit: MNIST
# 11 MB + cifar10_train_1 28 MB + test_first1000 3 MB fits; both train files do not):
#   mkdir -p data/mnist data/cifar10 && cp ../shared/data/mnist/*.gz data/mnist/ &&
#   cp ../shared/data/cifar10/cifar10_{train_1,test_first1000_exact}.npz data/cifar10/ &&
#   echo /data/ >> "$(git rev-parse --git-common-dir)/info/exclude"
# then run, e.g. through the device tool with carry=["data"]:
#   FPANALYSIS_GIT_COMMIT=<commit> bash experiments/gpu_sweep.sh
# Results: experiments/results/gpu_sweep/{mnist,cifar10,cifar10_adam}/ (runs/*.json,
# summary.md, summary.csv, weights/); when $OUT is set (device tool) the JSON results and
# summaries are packed into $OUT/gpu_sweep_results.tar.gz, and the weights into
# $OUT/gpu_sweep_weights_<sweep>[_<model>].tar (each under 15 MB).
# Sized for about 5 minutes of runs on one H200 (not measured yet: no GPU was lent when this was
# written); the deadlines stop launching runs after 1.5 + 3 + 1 + 1 minutes, so one call ends
# in about 7-8 minutes at most, and a second call resumes where it stopped.
#
# Environment knobs: FPA_DATA (default: data), PYTHON (default: python3), FPA_SEEDS (default 0,1),
# FPA_SCALE=smoke for a 30-second check of the whole script (tiny runs, results in /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATA=${FPA_DATA:-data}
SEEDS=${FPA_SEEDS:-0,1}
RES=experiments/results/gpu_sweep
EXTRA=()
M1=1.5; M2=3.0; M3=1.0
MODES=fp32,amp-fp16,fp16,bf16,amp-bf16
ADAM_MODES=fp32,amp-fp16,fp16
if [[ "${FPA_SCALE:-}" == "smoke" ]]; then
  # Checks the script's plumbing on a CPU: tiny runs, and only the modes that are fast there
  # (fp16 convolutions on a CPU take minutes per step at these sizes).
  RES=/tmp/gpu_sweep_smoke; EXTRA=(--n_train=256 --n_test=128 --epochs=2); M1=1; M2=1; M3=1
  MODES=fp32,bf16; ADAM_MODES=fp32,bf16
fi
DEVICE=${FPA_DEVICE:-cuda}

echo "== $(date -u +%FT%TZ) gpu_sweep.sh, results in $RES"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "numpy", numpy.__version__)'
for f in "$DATA"/mnist/train-images-idx3-ubyte.gz "$DATA"/cifar10/cifar10_test_first1000_exact.npz; do
  [[ -f "$f" ]] || { echo "missing data file $f (see the header of this script)"; exit 2; }
done

COMMON=(--device="$DEVICE" --backend=serial --no_progress --optimizers=sgd --batch_size=128 --seeds="$SEEDS")
t0=$(date +%s)

$PY -m experiments.sweep --out="$RES/mnist" "${COMMON[@]}" --max_minutes=$M1 \
  --datasets=mnist --data_dir="$DATA/mnist" --models=mlp,lenet5 --modes=$MODES --epochs=3 "${EXTRA[@]}"
echo "== mnist done after $(( $(date +%s) - t0 )) s"

$PY -m experiments.sweep --out="$RES/cifar10" "${COMMON[@]}" --max_minutes=$M2 \
  --datasets=cifar10 --data_dir="$DATA/cifar10" --models=resnet20,vgg_small,vit_tiny --modes=$MODES \
  --epochs=5 "${EXTRA[@]}"
echo "== cifar10 done after $(( $(date +%s) - t0 )) s"

for eps in 1e-8 1e-4; do
  $PY -m experiments.sweep --out="$RES/cifar10_adam" --device="$DEVICE" --backend=serial --no_progress \
    --max_minutes=$M3 --datasets=cifar10 --data_dir="$DATA/cifar10" --models=resnet20 \
    --modes=$ADAM_MODES --optimizers=adam --eps=$eps --tag=eps$eps --seeds=0 --batch_size=128 \
    --epochs=3 "${EXTRA[@]}"
done
echo "== all done after $(( $(date +%s) - t0 )) s"

if [[ -n "${OUT:-}" ]]; then
  tar czf "$OUT/gpu_sweep_results.tar.gz" --exclude='weights' -C "$(dirname "$RES")" "$(basename "$RES")"
  # Weights: one tar per sweep, or one per model when a sweep's is over 15 MB (the device tool
  # returns at most 8 files of 16 MB).
  for d in "$RES"/*/; do
    name=$(basename "$d")
    [[ -d "$d/weights" ]] || continue
    tar cf "$OUT/gpu_sweep_weights_$name.tar" -C "$d" weights
    if (( $(stat -c %s "$OUT/gpu_sweep_weights_$name.tar") > 15000000 )); then
      rm "$OUT/gpu_sweep_weights_$name.tar"
      for model in $(ls "$d/weights" | cut -d- -f2 | sort -u); do
        tar cf "$OUT/gpu_sweep_weights_${name}_$model.tar" -C "$d" $(cd "$d" && ls weights/*-"$model"-*.pt)
        size=$(stat -c %s "$OUT/gpu_sweep_weights_${name}_$model.tar")
        if (( size > 15000000 )); then
          rm "$OUT/gpu_sweep_weights_${name}_$model.tar"; echo "weights of $name/$model ($size bytes) too large to return"
        fi
      done
    fi
  done
  ls -la "$OUT"
fi
