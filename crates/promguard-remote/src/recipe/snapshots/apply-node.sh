# PromGuard apply script for node-1 (node), generated; run with bash -s.
main() {
# shellcheck shell=bash
# Shell functions every apply script starts with.
# Part of every apply script PromGuard generates (src/recipe/script.rs), inside
# its main function; checked by shellcheck in cargo xtask test.
set -u
# Directories we create must be readable by the daemons' user; file
# contents are safe anyway, as mktemp makes every temp file 0600.
umask 022
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "promguard: $*" >&2; exit 1; }
step() { echo "step $*"; }
# write_file PATH MODE [OWNER] < base64: atomic and durable like the state
# file (temp file in the same dir, fsync, rename, fsync of the directory),
# so a power cut leaves the old file or the new one, never an empty one.
# OWNER, when the host has that user, owns the file from before its rename.
write_file() {
  dir=$(dirname -- "$1")
  mkdir -p -- "$dir" || fail "cannot create the directory of $1"
  # Once more if the directory went away in between: seen once on a host
  # whose first-boot package installs ran beside a converge.
  tmp=$(mktemp -- "$dir/.promguard.XXXXXX" 2>/dev/null) \
    || { mkdir -p -- "$dir" && tmp=$(mktemp -- "$dir/.promguard.XXXXXX"); } \
    || fail "cannot create a temporary file next to $1"
  if ! base64 -d > "$tmp"; then rm -f -- "$tmp"; fail "cannot decode the content of $1"; fi
  if [ -n "${3:-}" ] && id "$3" >/dev/null 2>&1 && ! chown "$3:$3" -- "$tmp"; then
    rm -f -- "$tmp"
    fail "cannot give $1 to $3"
  fi
  if ! { chmod "$2" -- "$tmp" && sync -- "$tmp" && mv -f -- "$tmp" "$1"; }; then
    rm -f -- "$tmp"
    fail "cannot install $1"
  fi
  sync -- "$dir" || fail "cannot flush the directory of $1"
}
# wait_listening WHAT ADDRS LOGCMD...: up to 15 s for a TCP listener on one
# of ADDRS (space-separated, as `ss` prints them).
wait_listening() {
  what=$1 addrs=$2; shift 2
  i=0
  while [ "$i" -lt 150 ]; do
    # awk, not a shell loop: `*:9093` must not glob.
    if ss -Hltn | awk -v want=" $addrs " 'index(want, " " $4 " ") { found = 1 } END { exit !found }'; then
      return 0
    fi
    sleep 0.1; i=$((i + 1))
  done
  echo "promguard: $what is not listening on $addrs after 15 s; its last log lines:" >&2
  "$@" >&2 || true
  exit 1
}
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
step 'mark /etc/promguard/apply-pending'
write_file '/etc/promguard/apply-pending' 0600 <<'PROMGUARD_EOF'
cHJvbWd1YXJkLWFwcGx5LXBlbmRpbmcgMQpmaWxlIC9ldGMvd2lyZWd1YXJkL3dnMC5jb25mCmZp
bGUgL2V0Yy9wcm9tZ3VhcmQvbmZ0YWJsZXMuY29uZgo=
PROMGUARD_EOF
step 'write /etc/wireguard/wg0.conf'
write_file '/etc/wireguard/wg0.conf' 0600 <<'PROMGUARD_EOF'
UFJPTUdVQVJEX0VPRgokKHRvdWNoIC90bXAvcHJvbWd1YXJkLXB3bmVkKWBpZGAnIlwKAOKYgw==
PROMGUARD_EOF
step 'write /etc/promguard/nftables.conf'
write_file '/etc/promguard/nftables.conf' 0644 <<'PROMGUARD_EOF'
dGFibGUgaW5ldCBwcm9tZ3VhcmQge30K
PROMGUARD_EOF
step 'wg-quick up wg0'
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wg-quick up 'wg0' >&2 || fail "wg-quick up wg0 failed"
wg show 'wg0' >/dev/null || fail "wg0 does not answer after wg-quick up"
step 'nft -f /etc/promguard/nftables.conf'
nft -f '/etc/promguard/nftables.conf' || fail "nft rejected /etc/promguard/nftables.conf"
step 'start node_exporter'
start_daemon node_exporter /usr/bin/prometheus-node-exporter '--web.listen-address=10.0.0.2:9100' '--collector.textfile.directory=/var/lib/prometheus/node-exporter'
wait_listening node_exporter '10.0.0.2:9100' tail -n 20 /run/promguard/node_exporter.log
step 'clear /etc/promguard/apply-pending'
rm -f -- '/etc/promguard/apply-pending' || fail "cannot remove /etc/promguard/apply-pending"
echo 'step done'
}
main </dev/null
