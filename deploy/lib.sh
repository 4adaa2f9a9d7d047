# Shared by deploy/start_superlink.sh and deploy/start_supernode.sh (sourced).
# Callers set PROG (their name, for messages) and a usage() function first.

die() { echo "$PROG: error: $*" >&2; exit 2; }

# A value for option $1 (the caller passes "$@" after the option).
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

need_file() {  # need_file PATH WHAT
  [ -n "$1" ] || die "give $2 (see --help)"
  [ -f "$1" ] && [ -r "$1" ] || die "$2: '$1' is not a readable file"
}

need_port() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ] \
  || die "$2 must be a port number 1-65535, got '$1'"; }

# Absolute path: the daemon may resolve relative paths from another directory.
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

need_bin() {  # need_bin NAME -> full path, or a hint about the venv
  command -v "$1" || die "$1 not found on PATH (activate the venv that has flwr: source .venv/bin/activate)"
}

# launch MODE CONSOLE_FILE PID_FILE CMD...: print the command as one copyable
# line, then run it as MODE says: dry-run (print only), foreground (exec), or
# background (nohup; prints "PID <n>" once it survived its first second, so a
# bad flag or certificate shows up here and not later).
launch() {
  local mode="$1" console="$2" pidfile="$3"; shift 3
  printf '%q ' "$@" | sed 's/ $//'; echo
  case "$mode" in
    dry-run) return 0 ;;
    foreground) exec "$@" ;;
  esac
  nohup "$@" >"$console" 2>&1 </dev/null &
  local pid=$!
  sleep 2
  if ! kill -0 "$pid" 2>/dev/null; then
    local rc=0; wait "$pid" || rc=$?
    tail -n 20 "$console" >&2
    die "$1 exited at once with code $rc (console output above, in $console)"
  fi
  [ -z "$pidfile" ] || echo "$pid" >"$pidfile"
  echo "PID $pid (console: $console${pidfile:+, pid file: $pidfile}; stop with: kill $pid)"
}
