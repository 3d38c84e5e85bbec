#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA driver and CUDA 13's libraries but no Rust and no
# network: send this file and the binary that `bash .ci/cuda.sh link target-cuda` built here, then
#
#   bash .ci/gpu-check.sh target-cuda/oml OUT_DIR
#
# It prints the GPU, runs `oml doctor` (exit status kept), then a 2-minute fine-tune of the glyph
# demo from scratch in bf16 on the GPU. Each step has a time limit, so the whole check ends within
# about 8 minutes; the reports land in OUT_DIR.
#
# With this project's device tool (the working tree travels, at most 64 MiB; target-cuda/ is
# ignored, so it is carried): after `bash .ci/cuda.sh link target-cuda` here,
#   run(command='gunzip -c target-cuda/oml.gz > /tmp/oml && chmod +x /tmp/oml &&
#                bash .ci/gpu-check.sh /tmp/oml "$OUT"', carry=['target-cuda/oml.gz'], timeout_s=540)
set -uo pipefail
bin="${1:-target-cuda/oml}"
out="${2:-gpu-check}"
mkdir -p "$out"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
# CUDA 13's libraries may come only with a Python environment's wheels (nvidia/cu13/lib): add the
# folders that hold the ones the binary needs and the dynamic loader does not find yet.
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  if ! ldd "$bin" 2>/dev/null | grep -q "$lib => /"; then
    d="$(find /usr/local /opt /usr/lib -name "$lib" -printf '%h\n' 2>/dev/null | head -n 1)"
    [ -n "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 | tee "$out/gpu.txt"
echo "--- libraries the binary needs:"
ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc" | tee "$out/ldd.txt"
echo "--- oml doctor"
timeout 300 "$bin" doctor --device cuda:0 --json "$out/doctor.json" 2>&1 | tee "$out/doctor.txt"
doctor=${PIPESTATUS[0]}
echo "--- the glyph demo, from scratch, bf16 on the GPU, 120 s"
OML_OFFLINE=1 timeout 240 "$bin" demo --from-scratch --device cuda --precision bf16 --budget 120 \
  --out "$out/demo" 2>&1 | tail -n 25 | tee "$out/demo.txt"
echo "doctor exit status: $doctor"
exit "$doctor"
