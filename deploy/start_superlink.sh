#!/usr/bin/env bash
# Start the Flower SuperLink with TLS and SuperNode authentication, on the
# server host. Runs the ServerApp itself (--isolation subprocess, default).
#
#   deploy/start_superlink.sh --certs DIR [options] [-- extra flower-superlink flags]
#
#   --certs DIR        make_certs.sh's OUT_DIR: ca.crt, server.pem, server.key
#   --ca/--cert/--key  or the three files one by one (override --certs)
#   --host HOST        address to listen on (default 0.0.0.0: remote SuperNodes)
#   --port PORT        the one HTTPS port: Fleet, Control and ServerAppIo APIs
#                      (default 8000)
#   --database PATH    SQLite state: runs and registered node keys survive a
#                      restart (default: in memory, lost on restart)
#   --log-file PATH    Flower's rotating log (default superlink.log); console
#                      output goes to PATH with .out instead of .log
#   --isolation MODE   subprocess (default) or process (a separate
#                      flower-superexec runs the ServerApp, as in compose)
#   --pid-file PATH    also write the PID there
#   --foreground       run in this terminal instead of the background
#   --dry-run          print the command and exit
#
# Runtime dependency installation is always off: the SuperLink would
# otherwise `uv sync` the app's dependencies per run, ignoring our pins and
# pulling a CUDA torch (docs/deploy.md, Troubleshooting). Install the app in the
# venv first. Prints the exact command it runs, then "PID <n>".
set -euo pipefail
PROG=start_superlink.sh
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

certs="" ca="" cert="" key="" host=0.0.0.0 port=8000 database="" log=superlink.log
isolation=subprocess pidfile="" mode=background extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --certs) need_value "$@"; certs="$2"; shift 2 ;;
    --ca) need_value "$@"; ca="$2"; shift 2 ;;
    --cert) need_value "$@"; cert="$2"; shift 2 ;;
    --key) need_value "$@"; key="$2"; shift 2 ;;
    --host) need_value "$@"; host="$2"; shift 2 ;;
    --port) need_value "$@"; port="$2"; shift 2 ;;
    --database) need_value "$@"; database="$2"; shift 2 ;;
    --log-file) need_value "$@"; log="$2"; shift 2 ;;
    --isolation) need_value "$@"; isolation="$2"; shift 2 ;;
    --pid-file) need_value "$@"; pidfile="$2"; shift 2 ;;
    --foreground) mode=foreground; shift ;;
    --dry-run) mode=dry-run; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

if [ -n "$certs" ]; then
  ca="${ca:-$certs/ca.crt}" cert="${cert:-$certs/server.pem}" key="${key:-$certs/server.key}"
fi
need_file "$ca" "--ca (CA certificate)"
need_file "$cert" "--cert (server certificate)"
need_file "$key" "--key (server key)"
need_port "$port" --port
case "$isolation" in subprocess|process) ;; *) die "--isolation must be subprocess or process" ;; esac
bin="$(need_bin flower-superlink)"

cmd=("$bin"
  --ssl-ca-certfile "$(abspath "$ca")" --ssl-certfile "$(abspath "$cert")"
  --ssl-keyfile "$(abspath "$key")"
  --enable-supernode-auth --disable-runtime-dependency-installation
  --isolation "$isolation" --host "$host" --port "$port"
  --log-file "$(abspath "$log")")
[ -z "$database" ] || cmd+=(--database "$(abspath "$database")")
cmd+=("${extra[@]}")
launch "$mode" "$(abspath "${log%.log}.out")" "$pidfile" "${cmd[@]}"
