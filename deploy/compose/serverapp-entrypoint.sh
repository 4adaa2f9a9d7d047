#!/bin/sh
# Entry point of the superexec-serverapp container: the diffusion guidance
# service (TLS + bearer token, loopback only: only the ServerApp in this
# container calls it), then Flower's SuperExec, which runs the ServerApps.
# Arguments go to flower-superexec. GUIDANCE_DEVICE: cpu (default) or cuda.
set -eu
certs=/app/certificates
python -m diffusion_service.remote serve --model embedded \
  --address 127.0.0.1:50051 --device "${GUIDANCE_DEVICE:-cpu}" \
  --certfile "$certs/server.pem" --keyfile "$certs/server.key" \
  --token-file "$certs/token" &
exec flower-superexec "$@"
