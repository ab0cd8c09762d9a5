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
