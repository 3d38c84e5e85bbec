#!/usr/bin/env bash
# Executes every notebook in notebooks/ with the evcxr Rust kernel, headless, and fails on a cell
# error or a notebook without a rich (image or HTML) output.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${OML_CI_CACHE:-$HOME/.cache/oml-ci}"
mkdir -p "$cache"

if ! command -v evcxr_jupyter >/dev/null; then
  cargo install evcxr_jupyter --version 0.22.0 --locked --target-dir "$cache/evcxr-install-target"
fi
venv="$cache/jupyter-venv"
if [ ! -x "$venv/bin/jupyter-nbconvert" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q jupyter_client nbclient nbformat nbconvert ipykernel
fi
export JUPYTER_PATH="$cache/jupyter"
export JUPYTER_DATA_DIR="$cache/jupyter"
evcxr_jupyter --install >/dev/null

# evcxr compiles each notebook's crate in its own folder: a fixed one lets later notebooks (and
# later runs) reuse it; no optimisation keeps the cold compile short. Not under $HOME: rustc writes a
# relative rpath to the toolchain's libstd that is off by one level for the library evcxr loads
# when both share the /root prefix ("dlopen failed"); the library path below is a second guard.
evcxr_root="${OML_EVCXR_ROOT:-/var/tmp/oml-evcxr}"
export EVCXR_TMPDIR="$evcxr_root/build"
export LD_LIBRARY_PATH="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EVCXR_CONFIG_DIR="$cache/evcxr-config"
mkdir -p "$EVCXR_TMPDIR" "$EVCXR_CONFIG_DIR"
printf '[evcxr]\nopt_level = "0"\n' > "$EVCXR_CONFIG_DIR/evcxr.toml"
printf ':opt 0\n' > "$EVCXR_CONFIG_DIR/init.evcxr"
# The cells compile unoptimised (fast), the crates they use optimised: candle's matrix products are
# 50x slower at opt 0, which would make the fine-tuning notebook useless. Cargo reads this file
# in the folder above evcxr's build folder (evcxr writes its own .cargo/config.toml inside it).
# polars stays unoptimised (slow to compile, only reads small CSVs here).
mkdir -p "$evcxr_root/.cargo"
{
  printf '[profile.dev.package."*"]\nopt-level = 3\ndebug = false\ndebug-assertions = false\noverflow-checks = false\n'
  for p in polars polars-core polars-io polars-arrow polars-compute polars-utils polars-parquet polars-ops; do
    printf '[profile.dev.package.%s]\nopt-level = 0\n' "$p"
  done
} > "$evcxr_root/.cargo/config.toml"
# Notebooks never wait for the Hub: the zoo reads its cache only (03 then uses the local weights).
export OML_OFFLINE=1
export OML_PROGRESS=lines

out="$cache/executed"
mkdir -p "$out"
for nb in notebooks/*.ipynb; do
  name=$(basename "$nb" .ipynb)
  t0=$(date +%s)
  # cargo must write where evcxr loads from: no inherited target dir.
  (cd notebooks && env -u CARGO_TARGET_DIR "$venv/bin/jupyter-nbconvert" --to notebook --execute \
     --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=rust \
     "$name.ipynb" --output "$out/$name.ipynb")
  "$venv/bin/python" .ci/check_notebook.py "$out/$name.ipynb"
  echo "$name: executed in $(( $(date +%s) - t0 )) s"
done
