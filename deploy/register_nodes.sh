#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs with
# --enable-supernode-auth, and (optionally first) write the flwr connection.
#
#   deploy/register_nodes.sh [--add-connection ADDRESS --ca CA] CONNECTION PUB...
#
#   CONNECTION   name of a [superlink.CONNECTION] entry in $FLWR_HOME/config.toml
#                (default FLWR_HOME: ~/.flwr)
#   PUB...       public keys (supernode_credentials_<i>.pub)
#   --add-connection ADDRESS  first add/replace that entry:
#                [superlink.CONNECTION] address = ADDRESS, root-certificates = CA
#   --ca CA      CA certificate (absolute path is written) for --add-connection
#
# Runs `flwr supernode register PUB CONNECTION` for each key and then
# `flwr supernode list CONNECTION`. Stops at the first key the SuperLink refuses.
set -euo pipefail
PROG=register_nodes.sh
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

address="" ca=""
while [ $# -gt 0 ]; do
  case "$1" in
    --add-connection) need_value "$@"; address="$2"; shift 2 ;;
    --ca) need_value "$@"; ca="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "give a CONNECTION name and at least one public key (see --help)"
conn="$1"; shift
[[ "$conn" =~ ^[A-Za-z0-9_-]+$ ]] || die "CONNECTION must be a plain name, got '$conn'"
flwr="$(need_bin flwr)"
home="${FLWR_HOME:-$HOME/.flwr}"

if [ -n "$address" ]; then
  need_file "$ca" "--ca (CA certificate)"
  python3 "$(dirname "${BASH_SOURCE[0]}")/flwr_connection.py" \
    "$home/config.toml" "$conn" "$address" "$(abspath "$ca")" \
    || die "could not write the connection into $home/config.toml"
fi
for pub in "$@"; do
  need_file "$pub" "public key"
  echo "+ flwr supernode register $pub $conn"
  "$flwr" supernode register "$pub" "$conn" || die "registering $pub failed (exit $?)"
done
"$flwr" supernode list "$conn"
