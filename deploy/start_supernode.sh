#!/usr/bin/env bash
# Start one Flower SuperNode (a client machine) with TLS and node
# authentication. It dials out to the SuperLink only; nothing dials in.
#
#   deploy/start_supernode.sh --superlink HOST:PORT --ca CA --key KEY \
#       --partition-id I --num-partitions N [options] [-- extra flags]
#
#   --superlink HOST:PORT  the SuperLink (a name or IP in its certificate's SANs)
#   --ca FILE              CA certificate that signed the SuperLink's (ca.crt)
#   --key FILE             this node's private key (supernode_credentials_<i>);
#                          its .pub must be registered first (register_nodes.sh)
#   --partition-id I       this node's data partition, 0 .. N-1
#   --num-partitions N     must equal the run config's num-clients
#   --port PORT            this node's own ClientAppIo port (default 9094; give
#                          each SuperNode on one host its own)
#   --host HOST            address of that port (default 127.0.0.1; 0.0.0.0
#                          only with --isolation process across containers)
#   --isolation MODE       subprocess (default) or process
#   --flwr-home DIR        FLWR_HOME of this node (installed apps); default as is
#   --console FILE         console output (default supernode-<I>.out)
#   --pid-file PATH        also write the PID there
#   --foreground           run in this terminal instead of the background
#   --dry-run              print the command and exit
#
# Prints the exact command it runs, then "PID <n>". An unregistered key is
# refused by the SuperLink: the node exits with code 305.
set -euo pipefail
PROG=start_supernode.sh
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

superlink="" ca="" key="" pid_="" n="" port=9094 host=127.0.0.1 isolation=subprocess
flwr_home="" console="" pidfile="" mode=background extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --superlink) need_value "$@"; superlink="$2"; shift 2 ;;
    --ca) need_value "$@"; ca="$2"; shift 2 ;;
    --key) need_value "$@"; key="$2"; shift 2 ;;
    --partition-id) need_value "$@"; pid_="$2"; shift 2 ;;
    --num-partitions) need_value "$@"; n="$2"; shift 2 ;;
    --port) need_value "$@"; port="$2"; shift 2 ;;
    --host) need_value "$@"; host="$2"; shift 2 ;;
    --isolation) need_value "$@"; isolation="$2"; shift 2 ;;
    --flwr-home) need_value "$@"; flwr_home="$2"; shift 2 ;;
    --console) need_value "$@"; console="$2"; shift 2 ;;
    --pid-file) need_value "$@"; pidfile="$2"; shift 2 ;;
    --foreground) mode=foreground; shift ;;
    --dry-run) mode=dry-run; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[[ "$superlink" =~ ^[^:]+:[0-9]+$ || "$superlink" =~ ^\[.+\]:[0-9]+$ ]] \
  || die "--superlink must be HOST:PORT, got '${superlink}'"
need_file "$ca" "--ca (CA certificate)"
need_file "$key" "--key (node private key)"
[ -f "$key.pub" ] || echo "$PROG: note: no $key.pub beside the key; register the public key on the SuperLink side" >&2
[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "--num-partitions must be a positive integer, got '$n'"
[[ "$pid_" =~ ^[0-9]+$ ]] && [ "$pid_" -lt "$n" ] \
  || die "--partition-id must be 0 .. $((n - 1)), got '$pid_'"
need_port "$port" --port
case "$isolation" in subprocess|process) ;; *) die "--isolation must be subprocess or process" ;; esac
bin="$(need_bin flower-supernode)"
if [ -n "$flwr_home" ]; then
  mkdir -p "$flwr_home"
  export FLWR_HOME="$(abspath "$flwr_home")"
fi

cmd=("$bin"
  --root-certificates "$(abspath "$ca")" --superlink "$superlink"
  --auth-supernode-private-key "$(abspath "$key")"
  --node-config "partition-id=$pid_ num-partitions=$n"
  --isolation "$isolation" --host "$host" --port "$port")
cmd+=("${extra[@]}")
[ -z "$flwr_home" ] || echo "FLWR_HOME=$FLWR_HOME"
launch "$mode" "$(abspath "${console:-supernode-$pid_.out}")" "$pidfile" "${cmd[@]}"
