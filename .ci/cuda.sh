#!/usr/bin/env bash
# Compiles oml's `cuda` feature without a GPU: the CUDA compiler and headers come from PyPI
# (nvidia-cuda-nvcc, nvidia-cuda-cccl; CUDA 13), candle's kernels are compiled to PTX/cubin for
# compute capability 9.0 (H100/H200), and every target is checked and linted with the feature on.
# Linking needs the driver and the CUDA libraries, which this step does not (see the README's CUDA
# section).
#
#   bash .ci/cuda.sh              # clippy --all-targets --features cuda (then cudnn) -D warnings
#   bash .ci/cuda.sh env          # print the environment lines, to build by hand
#   bash .ci/cuda.sh link [OUT]   # a linked `oml` with --features cuda in OUT (default
#                                 # target-cuda/): CUDA's runtime libraries from PyPI wheels, a link
#                                 # stub for the driver; run it where the driver and the CUDA 13
#                                 # libraries are (LD_LIBRARY_PATH), e.g. `oml doctor`
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${OML_CI_CACHE:-$HOME/.cache/oml-ci}"
dir="$cache/cuda-toolkit"
if [ ! -x "$dir/nvidia/cu13/bin/nvcc" ]; then
  python3 -m venv "$cache/cuda-venv"
  "$cache/cuda-venv/bin/pip" install -q --target "$dir" nvidia-cuda-nvcc nvidia-cuda-cccl
fi
export CUDA_HOME="$dir/nvidia/cu13"
export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
if [ "${1:-}" = link ]; then
  out="${2:-target-cuda}"
  libs="$cache/cuda-libs"
  if [ ! -e "$libs/nvidia/cu13/lib/libcublasLt.so.13" ]; then
    "$cache/cuda-venv/bin/pip" download -q --no-deps -d "$cache/cuda-wheels" \
      nvidia-cuda-runtime nvidia-cublas nvidia-curand nvidia-cuda-nvrtc
    mkdir -p "$libs"
    for w in "$cache"/cuda-wheels/*.whl; do
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$libs"
    done
  fi
  # The link folder: unversioned names for the linker, and a stub libcuda.so.1 that defines every
  # driver function cudarc declares (each returns CUDA_ERROR_STUB_LIBRARY); the real driver
  # replaces it at run time.
  link="$cache/cuda-link"
  mkdir -p "$link"
  for l in cudart cublas cublasLt nvrtc; do ln -sf "$libs/nvidia/cu13/lib/lib$l.so.13" "$link/lib$l.so"; done
  ln -sf "$libs/nvidia/cu13/lib/libcurand.so.10" "$link/libcurand.so"
  cargo fetch --quiet
  sys="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19.10/src/driver/sys/mod.rs' | head -n 1)"
  grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys" | sed 's/pub unsafe fn //' | sort -u |
    sed 's/.*/int &(void) { return 34; }/' > "$link/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda_stub.c"
  # (With LD_LIBRARY_PATH=$link and this libcuda.so.1 link, the binary also runs here: every
  # GPU call answers "no driver", which is how the CPU fallback was tested.)
  ln -sf libcuda.so "$link/libcuda.so.1"
  # Its own target folder: these flags would otherwise rebuild the main one.
  CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$HOME/.cache/oml-target-cuda}" \
    RUSTFLAGS="-L native=$link -C strip=debuginfo" \
    cargo build --features cuda --bin oml
  mkdir -p "$out"
  cp "${CUDA_TARGET_DIR:-$HOME/.cache/oml-target-cuda}/debug/oml" "$out/oml"
  strip --strip-all "$out/oml"
  gzip -9 -c "$out/oml" > "$out/oml.gz"
  echo "linked: $out/oml ($(du -h "$out/oml" | cut -f1); $out/oml.gz $(du -h "$out/oml.gz" | cut -f1) to send); it needs:"
  readelf -d "$out/oml" | grep NEEDED | sed 's/.*\[\(.*\)\]/  \1/'
  exit 0
fi
if [ "${1:-}" = env ]; then
  echo "export CUDA_HOME=$CUDA_HOME PATH=$CUDA_HOME/bin:\$PATH CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
  exit 0
fi
"$CUDA_HOME/bin/nvcc" --version | tail -n 2
cargo clippy --all-targets --features cuda -- -D warnings
# cuDNN too: cudarc's cuDNN bindings are Rust (no header or library is needed to compile them), so
# the same toolkit checks it (measured: 19 s on top of the `cuda` check's warm target).
cargo clippy --all-targets --features cudnn -- -D warnings
