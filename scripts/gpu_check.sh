#!/usr/bin/env bash
# One command on a GPU machine, offline, in about 5 minutes: installs the
# bundle that scripts/gpu_bundle.sh built (gpu-bundle/) into a virtual
# environment that sees the machine's own torch, then runs
# `python -m benchmarks.gpu_check` (the GPU seen by the ServerApp and every
# ClientApp, guidance-feature throughput on GPU vs CPU, a 2-round federation of
# 10 clients at ResNet-10 width 64 sharing the GPU). Reports: report.json and
# report.md in --out (default outputs/gpu-check).
#
#   scripts/gpu_check.sh [--bundle gpu-bundle] [--out DIR] [-- gpu_check options]
#
# Without a GPU it says so in one line and exits 0. PYTHON picks the
# interpreter (default python3: the one that has torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
bundle="$ROOT/gpu-bundle" out="$ROOT/outputs/gpu-check" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

gpu="$("$PY" - 2>/dev/null <<'PY' || true
import torch
print("yes" if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device")
PY
)"
if [ "$gpu" != yes ]; then
  echo "gpu_check: no GPU here (${gpu:-$PY has no torch}); nothing to check."
  exit 0
fi
if ! ls "$bundle"/wheels/*.whl >/dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in $bundle/wheels; build the bundle first, on a" \
       "machine with PyPI: scripts/gpu_bundle.sh" >&2
  exit 2
fi

venv="${TMPDIR:-/tmp}/semanticfl-gpu-venv"
t0=$SECONDS
if [ ! -x "$venv/bin/flwr" ]; then
  "$PY" -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install --quiet --no-index --no-deps --no-compile \
    --disable-pip-version-check "$bundle"/wheels/*.whl
fi
echo "gpu_check: bundle installed in $venv ($((SECONDS - t0)) s)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$venv/bin/python" -m benchmarks.gpu_check --out "$out" \
  --data-root "$bundle/fashion-mnist" "${extra[@]}"
