#!/bin/bash
# One short GPU check (a lent GPU machine has minutes, not hours): the benchmark with a trained
# checkpoint, a 1-minute training run of the de->en recipe, the training loop's tokens/s
# against the benchmark's, then a profiled benchmark round. Results land in $OUT (or
# ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh CHECKPOINT [DATA_DIR]
#
# DATA_DIR holds the Multi30k files (train/val/test_2016_flickr .de.gz/.en.gz; default
# data/multi30k). On a machine without this project's packages, put wheels of the missing ones
# (e.g. hydra-core, omegaconf, antlr4-python3-runtime, datasets, dill, multiprocess) in
# $WHEELS (default .whl/): they are installed into /tmp/site first.
set -u
CKPT=${1:?give a trained checkpoint}
DATA=${2:-data/multi30k}
OUT=${OUT:-gpu_check_out}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
step() {  # name, seconds, command...
  local name=$1 limit=$2 start=$SECONDS; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: rc $? in $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.txt"
step benchmark 240 python3 scripts/benchmark.py checkpoint="$CKPT" data.dir="$DATA" \
  bench.probe_size=8192 hydra.run.dir=/tmp/gpu_check_bench
cp /tmp/gpu_check_bench/benchmark.json "$OUT/" 2>/dev/null
step train 150 python3 scripts/train.py experiment=multi30k_de_en data.dir="$DATA" \
  train.max_minutes=1 train.test_at_end=false train.progress_bar=false \
  hydra.run.dir=/tmp/gpu_check_train
cp /tmp/gpu_check_train/metrics.json "$OUT/train_metrics.json" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
bench = json.load(open(f"{out}/benchmark.json"))["train"]
loop = json.load(open(f"{out}/train_metrics.json"))["train"]["tgt_tokens_per_s"]
print(f"benchmark, seen shapes   {bench['tgt_tokens_per_s']:>12,.0f} tgt tok/s")
print(f"benchmark, unseen shapes {bench['unseen_shapes_tgt_tokens_per_s']:>12,.0f} tgt tok/s")
print(f"training loop, 1 minute  {loop:>12,.0f} tgt tok/s "
      f"({loop / bench['tgt_tokens_per_s']:.2f} of the benchmark)")
PY
# Last, as it is the least tried on a GPU: where a step's time goes (bench.profile, device time
# of the aten operators), training only, one short round.
step profile 120 python3 scripts/benchmark.py data.dir="$DATA" bench.profile=true \
  bench.rounds=1 bench.probe_size=8192 hydra.run.dir=/tmp/gpu_check_profile
for f in benchmark.json profile_train.txt profile_train_fp32.txt; do
  cp "/tmp/gpu_check_profile/$f" "$OUT/profile_$f" 2>/dev/null
done
