#!/usr/bin/env bash
# Executes every notebook in notebooks/ with the evcxr Rust kernel, headless, set up by the same
# `oml notebook setup` a user runs, and fails on a cell error, a compile error or a notebook without
# a rich (image or HTML) output.
#
#   .ci/notebooks.sh            execute into $OML_CI_CACHE/executed/ and check
#   .ci/notebooks.sh --write    also write the executed notebooks (with their outputs) back into
#                               notebooks/, as they are committed
#   .ci/notebooks.sh --write 05_metric_learning_101   only the notebooks named
set -euo pipefail
cd "$(dirname "$0")/.."
write=0
if [ "${1:-}" = "--write" ]; then
  write=1
  shift
fi
only=("$@")
cache="${OML_CI_CACHE:-$HOME/.cache/oml-ci}"
mkdir -p "$cache"
export PATH="$HOME/.cargo/bin:$PATH"

venv="$cache/jupyter-venv"
if [ ! -x "$venv/bin/jupyter-nbconvert" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q jupyter_client nbclient nbformat nbconvert ipykernel
fi
# The kernel goes where this script's Jupyter looks (a user's goes into their own Jupyter folder).
export JUPYTER_PATH="$cache/jupyter"
export JUPYTER_DATA_DIR="$cache/jupyter"
# The README's setup command: installs evcxr_jupyter when missing, writes the kernel with oml's
# evcxr configuration (a fixed build folder reused by every notebook, cells unoptimised, the crates
# they use optimised).
cargo run --quiet -- notebook setup --jupyter-dir "$JUPYTER_PATH" \
  --build-dir "${OML_EVCXR_ROOT:-$cache/evcxr}" --config-dir "$cache/evcxr-config" \
  --install-target-dir "$cache/evcxr-install-target"

# Notebooks never wait for the Hub. The zoo model of notebooks 03 and 04 comes from a local weights
# folder: the real DINOv2-S/14 of shared/ (see shared/DATA.md) under the zoo's name.
export OML_OFFLINE=1
export OML_PROGRESS=lines
weights="$cache/weights"
mkdir -p "$weights"
for d in ../shared/weights /work/shared/weights; do
  if [ -f "$d/vits14_dinov2_imgfocus.safetensors" ]; then
    ln -sf "$(cd "$d" && pwd)/vits14_dinov2_imgfocus.safetensors" "$weights/vits14_dinov2.safetensors"
    break
  fi
done
export OML_WEIGHTS_DIR="$weights"

out="$cache/executed"
mkdir -p "$out"
for nb in notebooks/*.ipynb; do
  name=$(basename "$nb" .ipynb)
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " =~ " ${name} " ]]; then
    continue
  fi
  t0=$(date +%s)
  # cargo must write where evcxr loads from: no inherited target dir.
  (cd notebooks && env -u CARGO_TARGET_DIR "$venv/bin/jupyter-nbconvert" --to notebook --execute \
     --ExecutePreprocessor.timeout=2400 --ExecutePreprocessor.kernel_name=rust \
     "$name.ipynb" --output "$out/$name.ipynb")
  "$venv/bin/python" .ci/check_notebook.py "$out/$name.ipynb"
  echo "$name: executed in $(( $(date +%s) - t0 )) s"
  if [ $write = 1 ]; then
    "$venv/bin/python" .ci/check_notebook.py --strip-timings "$out/$name.ipynb" "$nb"
  fi
done
