# shellcheck shell=bash
# Functions for hosts without systemd: daemons tracked by PID files.
# Part of every apply script PromGuard generates (src/recipe/script.rs), inside
# its main function; checked by shellcheck in cargo xtask test.
# is_ours PID BINARY: the process runs BINARY (guards against PID reuse).
is_ours() { [ "$(tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | head -n 1)" = "$2" ]; }
# stop_daemon NAME BINARY: ends the process in NAME's PID file, by PID.
stop_daemon() {
  pid=
  [ -r "/run/promguard/$1.pid" ] && read -r pid < "/run/promguard/$1.pid"
  case "$pid" in ''|*[!0-9]*) rm -f "/run/promguard/$1.pid"; return 0;; esac
  if is_ours "$pid" "$2"; then
    kill "$pid" 2>/dev/null
    i=0
    while is_ours "$pid" "$2" && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if is_ours "$pid" "$2"; then kill -9 "$pid" 2>/dev/null; fi
  fi
  rm -f "/run/promguard/$1.pid"
}
# start_daemon NAME BINARY ARGS...: detached, as the prometheus user when
# it exists, PID in /run/promguard/NAME.pid (written by the process itself,
# so it is the daemon's PID), output appended to /run/promguard/NAME.log.
start_daemon() {
  name=$1; shift
  if command -v setpriv >/dev/null 2>&1 && id prometheus >/dev/null 2>&1; then
    launch_daemon "$name" "$1" setpriv --reuid=prometheus --regid=prometheus --init-groups -- "$@"
  else
    launch_daemon "$name" "$1" "$@"
  fi
}
# start_root_daemon NAME BINARY ARGS...: as start_daemon, but as root
# (the WireGuard metrics collector: `wg show` needs it).
start_root_daemon() {
  name=$1; shift
  launch_daemon "$name" "$1" "$@"
}
# launch_daemon NAME BINARY COMMAND...: stops NAME's BINARY, then starts
# COMMAND detached (see start_daemon).
launch_daemon() {
  name=$1 binary=$2; shift 2
  mkdir -p /run/promguard || fail "cannot create /run/promguard"
  stop_daemon "$name" "$binary"
  setsid sh -c 'echo $$ > "$0" && exec "$@"' "/run/promguard/$name.pid" "$@" \
    </dev/null >>"/run/promguard/$name.log" 2>&1 &
}
# signal_daemon NAME BINARY SIGNAL
signal_daemon() {
  pid=
  [ -r "/run/promguard/$1.pid" ] && read -r pid < "/run/promguard/$1.pid"
  case "$pid" in ''|*[!0-9]*) fail "$1 has no PID file";; esac
  is_ours "$pid" "$2" || fail "$1 is not running"
  kill "-$3" "$pid" || fail "cannot signal $1"
}
# start_env_daemon NAME ENVFILE BINARY ARGS...: start_daemon with the
# variables of ENVFILE (NAME='value' lines) in its environment. The file
# is read here, as root, so it can be 0600 (it may hold a password), and
# in a subshell, so its variables stay out of the rest of the script.
start_env_daemon() {
  name=$1 envfile=$2; shift 2
  [ -r "$envfile" ] || fail "cannot read $envfile"
  # shellcheck disable=SC1090
  ( set -a; . "$envfile"; set +a; start_daemon "$name" "$@" ) || fail "cannot start $name"
}
