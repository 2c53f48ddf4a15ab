#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, with a release binary
# built elsewhere (`cargo build --release`; nothing here needs Rust or a
# CUDA toolkit beyond the driver and NVRTC). In one run, under five minutes:
# `nof1d doctor`, then `nof1d bench gpu`: the device against the CPU
# engine (evaluations, whole fits, every decision of traced virtual trials),
# batched likelihood throughput and its crossover batch, one fit's time by
# series length, and a whole simulation on the GPU beside a smaller one on
# the CPU of the same machine.
#
#   bash bench/gpu-check.sh [path/to/nof1d]
#
# Sizes: TRIALS (virtual trials a condition, per GPU run, default 500),
# IN_FLIGHT (fits kept in flight on the GPU, one run each: 256,2048),
# CPU_TRIALS (500), DECISION_TRIALS (50), FIT_DAYS
# (365,3000,10000,30000,100000). Output: the tables on stdout; JSON and logs
# in $OUT (default ./gpu-check-out).
set -uo pipefail
BIN=${1:-target/release/nof1d}
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
# NVRTC and the driver where CUDA images keep them: the toolkit's lib64,
# and the nvidia-cuda-nvrtc wheel's folder where Python has one.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
  "$(python3 -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))' 2>/dev/null)"; do
  if [ -n "$d" ] && [ -d "$d" ]; then LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
done
export LD_LIBRARY_PATH
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
nproc
echo "== nof1d doctor"
"$BIN" doctor --data-dir "$OUT/no-data" 2>&1 | tee "$OUT/doctor.txt"
echo "== nof1d simulate --backend cuda (the command line's path)"
"$BIN" simulate --protocol protocols/screen-cutoff.toml --trials 200 --backend cuda \
  --out "$OUT/simulate-cuda.json" 2>&1 | tail -6
echo "== nof1d bench gpu"
"$BIN" bench gpu --trials "${TRIALS:-500}" --cpu-trials "${CPU_TRIALS:-500}" \
  --in-flight "${IN_FLIGHT:-256,2048}" \
  --decision-trials "${DECISION_TRIALS:-50}" --fit-days "${FIT_DAYS:-365,3000,10000,30000,100000}" \
  --out "$OUT/gpu-bench.json" 2> >(tee "$OUT/gpu-bench.log" >&2)
