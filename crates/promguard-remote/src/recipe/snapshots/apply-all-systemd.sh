# PromGuard apply script for monitor (monitor), generated; run with bash -s.
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
# Route upkeep after `wg syncconf`, which adds no routes for new peers.
# Part of every apply script PromGuard generates (src/recipe/script.rs), inside
# its main function; checked by shellcheck in cargo xtask test.
# sync_routes IFACE: a route per AllowedIPs entry, none for removed peers.
sync_routes() {
  allowed=" $(wg show "$1" allowed-ips | cut -f 2 | tr '\n' ' ') "
  for net in $allowed; do
    [ "$net" = "(none)" ] || ip route replace "$net" dev "$1" || fail "cannot add a route to $net via $1"
  done
  for fam in 4 6; do
    ip "-$fam" route show dev "$1" | while read -r dst rest; do
      case " $rest " in *" proto kernel "*) continue;; esac
      case "$dst" in */*) net=$dst;; *) if [ "$fam" = 4 ]; then net=$dst/32; else net=$dst/128; fi;; esac
      case "$allowed" in *" $net "*) ;; *) ip "-$fam" route del "$dst" dev "$1" || true;; esac
    done
  done
}
# shellcheck shell=bash
# Package installation with apt-get, for hosts the recipe installs packages
# on. Part of the apply scripts PromGuard generates (src/recipe/script.rs)
# that install packages, inside their main function; checked by shellcheck
# in cargo xtask test. A script calls apt_begin, then hold_units (systemd)
# or hold_services (without systemd), apt_install, then release_units or
# release_services.
# apt_begin LOG: apt's output goes to LOG on the host and the script
# ignores SIGPIPE and SIGHUP from here on: a connection cut mid-install
# (Ctrl-C, SIGKILL of promguard, a network drop) lets the install finish
# instead of killing dpkg halfway. One interrupted by other means (a
# reboot) is finished by `dpkg --configure -a` on the next run.
apt_begin() {
  trap '' PIPE HUP
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p -- "${1%/*}" || fail "cannot create ${1%/*}"
  apt_log=$1
}
apt_fail() { echo "promguard: $1; the end of $apt_log:" >&2; tail -n 20 "$apt_log" >&2; }
# hold_units UNIT...: runtime masks keep the new services from starting:
# they live in /run, so even a SIGKILL of this script leaves nothing that
# survives a reboot, touch other packages (a policy-rc.d left behind would
# keep every later upgrade, openssh's included, from restarting its
# service), and the start of each daemon later in the script unmasks it
# first.
hold_units() {
  systemctl mask --runtime --quiet "$@" || fail "cannot hold back $*"
}
# release_units UNIT...: nothing starts them now; the actions later in the
# script start them with PromGuard's config in place.
release_units() {
  systemctl unmask --runtime --quiet "$@" || fail "cannot unmask $*"
}
# hold_services: without systemd, policy-rc.d is the only way; it removes
# itself when the script that wrote it is gone, so a cut-off install
# leaves no lasting effect.
hold_services() {
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# PromGuard, while it installs packages (pid %s)\n[ -d /proc/%s ] && exit 101\nrm -f "$0"; exit 0\n' "$$" "$$" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy=1
  fi
  trap '[ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
}
release_services() {
  [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
  policy=
}
# apt_purge PACKAGE: removes a package PromGuard installed for an exporter
# the config no longer names, with its config files (its defaults file may
# hold a secret). What apt pulled in for it stays: other software may use
# it by now.
apt_purge() {
  apt-get purge -y -q -o DPkg::Lock::Timeout=300 "$1" >>"$apt_log" 2>&1 || { apt_fail "apt-get purge $1 failed"; exit 1; }
}
# apt_install PACKAGE...
apt_install() {
  # cloud-init may be installing packages of its own on a first boot.
  if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi
  # A dpkg run cut short (by a reboot) is finished first; while another
  # one holds the lock (a cut-off run's install still going), retry.
  i=0
  while [ -n "$(dpkg --audit 2>/dev/null)" ]; do
    dpkg --configure -a >>"$apt_log" 2>&1 && break
    [ "$i" -lt 300 ] || { apt_fail "dpkg --configure -a failed"; exit 1; }
    sleep 1; i=$((i + 1))
  done
  apt-get -q -o DPkg::Lock::Timeout=300 update >>"$apt_log" 2>&1 || { apt_fail "apt-get update failed"; exit 1; }
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >>"$apt_log" 2>&1 || { apt_fail "apt-get install failed"; exit 1; }
}
step 'apt-get install wireguard-tools prometheus'
apt_begin '/var/log/promguard/apt.log'
hold_units 'prometheus-node-exporter.service' 'prometheus.service' 'prometheus-alertmanager.service' 'prometheus-postgres-exporter.service'
apt_install 'wireguard-tools' 'prometheus'
release_units 'prometheus-node-exporter.service' 'prometheus.service' 'prometheus-alertmanager.service' 'prometheus-postgres-exporter.service'
step 'mark /etc/promguard/apply-pending'
write_file '/etc/promguard/apply-pending' 0600 <<'PROMGUARD_EOF'
cHJvbWd1YXJkLWFwcGx5LXBlbmRpbmcgMQpmaWxlIC9ldGMvd2lyZWd1YXJkL3dnMC5jb25mCmZp
bGUgL2V0Yy9wcm9tZ3VhcmQvbmZ0YWJsZXMuY29uZgpmaWxlIC9ldGMvcHJvbWV0aGV1cy9hbGVy
dG1hbmFnZXIueW1sCmZpbGUgL2V0Yy9wcm9tZXRoZXVzL3Byb21ldGhldXMueW1sCmZpbGUgL2V0
Yy9wcm9tZXRoZXVzL3Byb21ndWFyZC9ub2RlLmpzb24KZmlsZSAvZXRjL3Byb21ndWFyZC93Zy1t
ZXRyaWNzLnNoCmZpbGUgL2V0Yy9kZWZhdWx0L3Byb21ldGhldXMtbm9kZS1leHBvcnRlcgpmaWxl
IC9ldGMvc3lzdGVtZC9zeXN0ZW0vcHJvbWV0aGV1cy1ub2RlLWV4cG9ydGVyLnNlcnZpY2UuZC9w
cm9tZ3VhcmQuY29uZgpmaWxlIC9ldGMvc3lzdGVtZC9zeXN0ZW0vcHJvbWd1YXJkLWZpcmV3YWxs
LnNlcnZpY2UKZmlsZSAvZXRjL3N5c3RlbWQvc3lzdGVtL3Byb21ndWFyZC13Zy1tZXRyaWNzLnNl
cnZpY2UKZmlsZSAvZXRjL2RlZmF1bHQvcHJvbWV0aGV1cwpmaWxlIC9ldGMvZGVmYXVsdC9wcm9t
ZXRoZXVzLWFsZXJ0bWFuYWdlcgpmaWxlIC9ldGMvZGVmYXVsdC9wcm9tZXRoZXVzLXBvc3RncmVz
LWV4cG9ydGVyCmZpbGUgL2V0Yy9zeXN0ZW1kL3N5c3RlbS9wcm9tZXRoZXVzLXBvc3RncmVzLWV4
cG9ydGVyLnNlcnZpY2UuZC9wcm9tZ3VhcmQuY29uZgo=
PROMGUARD_EOF
step 'write /etc/wireguard/wg0.conf'
write_file '/etc/wireguard/wg0.conf' 0600 <<'PROMGUARD_EOF'
W0ludGVyZmFjZV0KUHJpdmF0ZUtleSA9IHNlY3JldAo=
PROMGUARD_EOF
step 'write /etc/promguard/nftables.conf'
write_file '/etc/promguard/nftables.conf' 0644 <<'PROMGUARD_EOF'
dGFibGUgaW5ldCBwcm9tZ3VhcmQge30K
PROMGUARD_EOF
step 'write /etc/prometheus/alertmanager.yml'
write_file '/etc/prometheus/alertmanager.yml' 0600 prometheus <<'PROMGUARD_EOF'
cm91dGU6IHtyZWNlaXZlcjogcHJvbWd1YXJkfQpyZWNlaXZlcnM6IFt7bmFtZTogcHJvbWd1YXJk
fV0K
PROMGUARD_EOF
step 'write /etc/prometheus/prometheus.yml'
write_file '/etc/prometheus/prometheus.yml' 0644 <<'PROMGUARD_EOF'
Z2xvYmFsOiB7fQo=
PROMGUARD_EOF
step 'write /etc/prometheus/promguard/node.json'
write_file '/etc/prometheus/promguard/node.json' 0644 <<'PROMGUARD_EOF'
W10K
PROMGUARD_EOF
step 'write /etc/promguard/wg-metrics.sh'
write_file '/etc/promguard/wg-metrics.sh' 0755 <<'PROMGUARD_EOF'
IyEvYmluL2Jhc2gKIyBzaGVsbGNoZWNrIHNoZWxsPWJhc2gKIyBQcm9tR3VhcmQncyBXaXJlR3Vh
cmQgbWV0cmljcyBjb2xsZWN0b3IgKHNyYy9yZWNpcGUvc2NyaXB0LnJzIGluc3RhbGxzIGl0CiMg
YXQgL2V0Yy9wcm9tZ3VhcmQvd2ctbWV0cmljcy5zaCBhbmQgcnVucyBpdCBhcyBhIGRhZW1vbik6
IGV2ZXJ5IElOVEVSVkFMCiMgc2Vjb25kcyBpdCB3cml0ZXMgSU5URVJGQUNFJ3MgcGVyLXBlZXIg
aGVhbHRoIGZvciBub2RlX2V4cG9ydGVyJ3MgdGV4dGZpbGUKIyBjb2xsZWN0b3IsIGF0b21pY2Fs
bHkgKGEgdGVtcG9yYXJ5IGZpbGUgcmVuYW1lZCBpbnRvIHBsYWNlKSwgc28gYSBzY3JhcGUKIyBu
ZXZlciBzZWVzIGhhbGYgYSBmaWxlLgojCiMgVXNhZ2U6IHdnLW1ldHJpY3Muc2ggSU5URVJGQUNF
IFRFWFRGSUxFX0RJUiBJTlRFUlZBTCBQRUVSX05BTUVTCiMgKElOVEVSVkFMIDAgY29sbGVjdHMg
b25jZSBhbmQgZXhpdHMuKQojCiMgSXQgcmVhZHMgb25seSBgd2cgc2hvdyBJTlRFUkZBQ0UgbGF0
ZXN0LWhhbmRzaGFrZXN8dHJhbnNmZXJ8ZW5kcG9pbnRzfAojIGxpc3Rlbi1wb3J0YCwgbmV2ZXIg
YGR1bXBgIG9yIHRoZSBjb25maWc6IG5vIHByaXZhdGUgb3IgcHJlc2hhcmVkIGtleQojIHBhc3Nl
cyB0aHJvdWdoIGl0LiBQRUVSX05BTUVTIG1hcHMgcHVibGljIGtleXMgdG8gaG9zdCBuYW1lcyAo
IktFWSBOQU1FIgojIHBlciBsaW5lLCB3cml0dGVuIGJ5IFByb21HdWFyZCkuIEV2ZXJ5IHZhbHVl
IGlzIGNoZWNrZWQgYmVmb3JlIGl0IGlzCiMgd3JpdHRlbjoga2V5cyBhcmUgNDQgYmFzZTY0IGNo
YXJhY3RlcnMsIG51bWJlcnMgYXJlIGRpZ2l0cywgbmFtZXMgYXJlCiMgW2EtejAtOS1dOyBhbnl0
aGluZyBlbHNlIGlzIHNraXBwZWQsIHNvIGEgbGFiZWwgbmV2ZXIgaG9sZHMgdGV4dCBhIGhvc3QK
IyBvciBhIGZpbGUgbWFkZSB1cC4gVGhlIGZyZXNobmVzcyBtZXRyaWMgaXMgd3JpdHRlbiBvbmx5
IGFmdGVyIGEKIyBjb21wbGV0ZSBjb2xsZWN0aW9uLCBzbyBhIGNvbGxlY3RvciB0aGF0IGZhaWxz
IG9yIGhhbmdzIHNob3dzIGFzIHN0YWxlLgpzZXQgLXUKUEFUSD0vdXNyL2xvY2FsL3NiaW46L3Vz
ci9sb2NhbC9iaW46L3Vzci9zYmluOi91c3IvYmluOi9zYmluOi9iaW4KaWZhY2U9JDEgZGlyPSQy
IGludGVydmFsPSQzIG5hbWVzX2ZpbGU9JDQKY2FzZSAiJGlmYWNlIiBpbiAnJ3wqWyFhLXowLTlf
PSsuLV0qKSBlY2hvICJiYWQgaW50ZXJmYWNlIG5hbWUiID4mMjsgZXhpdCAyOzsgZXNhYwpjYXNl
ICIkaW50ZXJ2YWwiIGluICcnfCpbITAtOV0qKSBlY2hvICJiYWQgaW50ZXJ2YWwiID4mMjsgZXhp
dCAyOzsgZXNhYwoKaXNfa2V5KCkgeyBbICIkeyMxfSIgLWVxIDQ0IF0gJiYgY2FzZSAiJDEiIGlu
ICpbIUEtWmEtejAtOSsvPV0qKSBmYWxzZTs7ICopIHRydWU7OyBlc2FjOyB9CmlzX251bWJlcigp
IHsgY2FzZSAiJDEiIGluICcnfCpbITAtOV0qKSBmYWxzZTs7ICopIFsgIiR7IzF9IiAtbGUgMjAg
XTs7IGVzYWM7IH0KaXNfbmFtZSgpIHsgY2FzZSAiJDEiIGluICcnfCpbIWEtejAtOS1dKikgZmFs
c2U7OyAqKSBbICIkeyMxfSIgLWxlIDYzIF07OyBlc2FjOyB9Cgpjb2xsZWN0KCkgewogIGxvY2Fs
IGhzIHRyIGVwIHBvcnQga2V5IHZhbHVlIHJ4IHR4IG5hbWUgbGFiZWxzIG5vdwogIGhzPSQod2cg
c2hvdyAiJGlmYWNlIiBsYXRlc3QtaGFuZHNoYWtlcykgfHwgcmV0dXJuIDEKICB0cj0kKHdnIHNo
b3cgIiRpZmFjZSIgdHJhbnNmZXIpIHx8IHJldHVybiAxCiAgZXA9JCh3ZyBzaG93ICIkaWZhY2Ui
IGVuZHBvaW50cykgfHwgcmV0dXJuIDEKICBwb3J0PSQod2cgc2hvdyAiJGlmYWNlIiBsaXN0ZW4t
cG9ydCkgfHwgcmV0dXJuIDEKICBkZWNsYXJlIC1BIG5hbWVzPSgpIGhhbmRzaGFrZT0oKSByZWNl
aXZlZD0oKSBzZW50PSgpIGVuZHBvaW50PSgpCiAgaWYgWyAtciAiJG5hbWVzX2ZpbGUiIF07IHRo
ZW4KICAgIHdoaWxlIHJlYWQgLXIga2V5IG5hbWUgXzsgZG8KICAgICAgaXNfa2V5ICIka2V5IiAm
JiBpc19uYW1lICIkbmFtZSIgJiYgbmFtZXNbJGtleV09JG5hbWUKICAgIGRvbmUgPCAiJG5hbWVz
X2ZpbGUiCiAgZmkKICB3aGlsZSByZWFkIC1yIGtleSB2YWx1ZSBfOyBkbwogICAgaXNfa2V5ICIk
a2V5IiAmJiBpc19udW1iZXIgIiR2YWx1ZSIgJiYgaGFuZHNoYWtlWyRrZXldPSR2YWx1ZQogIGRv
bmUgPDw8ICIkaHMiCiAgd2hpbGUgcmVhZCAtciBrZXkgcnggdHggXzsgZG8KICAgIGlzX2tleSAi
JGtleSIgJiYgaXNfbnVtYmVyICIkcngiICYmIGlzX251bWJlciAiJHR4IiAmJiByZWNlaXZlZFsk
a2V5XT0kcnggJiYgc2VudFska2V5XT0kdHgKICBkb25lIDw8PCAiJHRyIgogIHdoaWxlIHJlYWQg
LXIga2V5IHZhbHVlIF87IGRvCiAgICBpZiBpc19rZXkgIiRrZXkiOyB0aGVuCiAgICAgIGlmIFsg
IiR2YWx1ZSIgPSAiKG5vbmUpIiBdOyB0aGVuIGVuZHBvaW50WyRrZXldPTA7IGVsc2UgZW5kcG9p
bnRbJGtleV09MTsgZmkKICAgIGZpCiAgZG9uZSA8PDwgIiRlcCIKICBwcmludGYgJyMgSEVMUCB3
aXJlZ3VhcmRfbGF0ZXN0X2hhbmRzaGFrZV9zZWNvbmRzIFVuaXggdGltZSBvZiB0aGUgbGF0ZXN0
IGhhbmRzaGFrZSB3aXRoIHRoZSBwZWVyICgwOiBuZXZlcikuXG4nCiAgcHJpbnRmICcjIFRZUEUg
d2lyZWd1YXJkX2xhdGVzdF9oYW5kc2hha2Vfc2Vjb25kcyBnYXVnZVxuJwogIGZvciBrZXkgaW4g
IiR7IWhhbmRzaGFrZVtAXX0iOyBkbwogICAgbGFiZWxzPSJpbnRlcmZhY2U9XCIkaWZhY2VcIixw
dWJsaWNfa2V5PVwiJGtleVwiLHBlZXI9XCIke25hbWVzWyRrZXldOi11bmtub3dufVwiIgogICAg
cHJpbnRmICd3aXJlZ3VhcmRfbGF0ZXN0X2hhbmRzaGFrZV9zZWNvbmRzeyVzfSAlc1xuJyAiJGxh
YmVscyIgIiR7aGFuZHNoYWtlWyRrZXldfSIKICBkb25lCiAgcHJpbnRmICcjIEhFTFAgd2lyZWd1
YXJkX3JlY2VpdmVkX2J5dGVzX3RvdGFsIEJ5dGVzIHJlY2VpdmVkIGZyb20gdGhlIHBlZXIuXG4n
CiAgcHJpbnRmICcjIFRZUEUgd2lyZWd1YXJkX3JlY2VpdmVkX2J5dGVzX3RvdGFsIGNvdW50ZXJc
bicKICBmb3Iga2V5IGluICIkeyFyZWNlaXZlZFtAXX0iOyBkbwogICAgbGFiZWxzPSJpbnRlcmZh
Y2U9XCIkaWZhY2VcIixwdWJsaWNfa2V5PVwiJGtleVwiLHBlZXI9XCIke25hbWVzWyRrZXldOi11
bmtub3dufVwiIgogICAgcHJpbnRmICd3aXJlZ3VhcmRfcmVjZWl2ZWRfYnl0ZXNfdG90YWx7JXN9
ICVzXG4nICIkbGFiZWxzIiAiJHtyZWNlaXZlZFska2V5XX0iCiAgZG9uZQogIHByaW50ZiAnIyBI
RUxQIHdpcmVndWFyZF9zZW50X2J5dGVzX3RvdGFsIEJ5dGVzIHNlbnQgdG8gdGhlIHBlZXIuXG4n
CiAgcHJpbnRmICcjIFRZUEUgd2lyZWd1YXJkX3NlbnRfYnl0ZXNfdG90YWwgY291bnRlclxuJwog
IGZvciBrZXkgaW4gIiR7IXNlbnRbQF19IjsgZG8KICAgIGxhYmVscz0iaW50ZXJmYWNlPVwiJGlm
YWNlXCIscHVibGljX2tleT1cIiRrZXlcIixwZWVyPVwiJHtuYW1lc1ska2V5XTotdW5rbm93bn1c
IiIKICAgIHByaW50ZiAnd2lyZWd1YXJkX3NlbnRfYnl0ZXNfdG90YWx7JXN9ICVzXG4nICIkbGFi
ZWxzIiAiJHtzZW50WyRrZXldfSIKICBkb25lCiAgcHJpbnRmICcjIEhFTFAgd2lyZWd1YXJkX3Bl
ZXJfZW5kcG9pbnRfc2V0IFdoZXRoZXIgdGhlIHBlZXIgaGFzIGFuIGVuZHBvaW50ICgxKSBvciBu
b3QgKDApLlxuJwogIHByaW50ZiAnIyBUWVBFIHdpcmVndWFyZF9wZWVyX2VuZHBvaW50X3NldCBn
YXVnZVxuJwogIGZvciBrZXkgaW4gIiR7IWVuZHBvaW50W0BdfSI7IGRvCiAgICBsYWJlbHM9Imlu
dGVyZmFjZT1cIiRpZmFjZVwiLHB1YmxpY19rZXk9XCIka2V5XCIscGVlcj1cIiR7bmFtZXNbJGtl
eV06LXVua25vd259XCIiCiAgICBwcmludGYgJ3dpcmVndWFyZF9wZWVyX2VuZHBvaW50X3NldHsl
c30gJXNcbicgIiRsYWJlbHMiICIke2VuZHBvaW50WyRrZXldfSIKICBkb25lCiAgcHJpbnRmICcj
IEhFTFAgd2lyZWd1YXJkX3BlZXJzIFBlZXJzIGNvbmZpZ3VyZWQgb24gdGhlIGludGVyZmFjZS5c
bicKICBwcmludGYgJyMgVFlQRSB3aXJlZ3VhcmRfcGVlcnMgZ2F1Z2VcbicKICBwcmludGYgJ3dp
cmVndWFyZF9wZWVyc3tpbnRlcmZhY2U9IiVzIn0gJXNcbicgIiRpZmFjZSIgIiR7I2hhbmRzaGFr
ZVtAXX0iCiAgaWYgaXNfbnVtYmVyICIkcG9ydCI7IHRoZW4KICAgIHByaW50ZiAnIyBIRUxQIHdp
cmVndWFyZF9saXN0ZW5fcG9ydCBVRFAgcG9ydCB0aGUgaW50ZXJmYWNlIGxpc3RlbnMgb24uXG4n
CiAgICBwcmludGYgJyMgVFlQRSB3aXJlZ3VhcmRfbGlzdGVuX3BvcnQgZ2F1Z2VcbicKICAgIHBy
aW50ZiAnd2lyZWd1YXJkX2xpc3Rlbl9wb3J0e2ludGVyZmFjZT0iJXMifSAlc1xuJyAiJGlmYWNl
IiAiJHBvcnQiCiAgZmkKICBwcmludGYgLXYgbm93ICclKCVzKVQnIC0xCiAgcHJpbnRmICcjIEhF
TFAgcHJvbWd1YXJkX3dpcmVndWFyZF9jb2xsZWN0b3JfbGFzdF9ydW5fdGltZXN0YW1wX3NlY29u
ZHMgVW5peCB0aW1lIG9mIHRoZSBjb2xsZWN0b3InIiciJ3MgbGF0ZXN0IGNvbXBsZXRlIHJ1bi5c
bicKICBwcmludGYgJyMgVFlQRSBwcm9tZ3VhcmRfd2lyZWd1YXJkX2NvbGxlY3Rvcl9sYXN0X3J1
bl90aW1lc3RhbXBfc2Vjb25kcyBnYXVnZVxuJwogIHByaW50ZiAncHJvbWd1YXJkX3dpcmVndWFy
ZF9jb2xsZWN0b3JfbGFzdF9ydW5fdGltZXN0YW1wX3NlY29uZHMgJXNcbicgIiRub3ciCn0KCm1r
ZGlyIC1wICIkZGlyIiB8fCBleGl0IDEKdG1wPSIkZGlyLy53aXJlZ3VhcmQucHJvbS4kJCIKdHJh
cCAncm0gLWYgIiR0bXAiJyBFWElUCnRyYXAgJ2V4aXQgMCcgVEVSTSBJTlQKd2hpbGUgOjsgZG8K
ICBpZiBjb2xsZWN0ID4gIiR0bXAiOyB0aGVuCiAgICBjaG1vZCAwNjQ0ICIkdG1wIiAmJiBtdiAt
ZiAiJHRtcCIgIiRkaXIvd2lyZWd1YXJkLnByb20iCiAgZWxzZQogICAgcm0gLWYgIiR0bXAiCiAg
ZmkKICBbICIkaW50ZXJ2YWwiID0gMCBdICYmIGV4aXQgMAogIHNsZWVwICIkaW50ZXJ2YWwiICYK
ICB3YWl0ICQhCmRvbmUK
PROMGUARD_EOF
step 'write /etc/default/prometheus-node-exporter'
write_file '/etc/default/prometheus-node-exporter' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZC4KQVJHUz0iLS13ZWIubGlzdGVuLWFkZHJlc3M9MTAuMC4w
LjE6OTEwMCAtLWNvbGxlY3Rvci50ZXh0ZmlsZS5kaXJlY3Rvcnk9L3Zhci9saWIvcHJvbWV0aGV1
cy9ub2RlLWV4cG9ydGVyIgo=
PROMGUARD_EOF
step 'write /etc/systemd/system/prometheus-node-exporter.service.d/promguard.conf'
write_file '/etc/systemd/system/prometheus-node-exporter.service.d/promguard.conf' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZDogbm9kZV9leHBvcnRlciBiaW5kcyB0byB0aGUgV2lyZUd1
YXJkIGFkZHJlc3MuCltVbml0XQpXYW50cz13Zy1xdWlja0B3ZzAuc2VydmljZQpBZnRlcj13Zy1x
dWlja0B3ZzAuc2VydmljZQo=
PROMGUARD_EOF
step 'write /etc/systemd/system/promguard-firewall.service'
write_file '/etc/systemd/system/promguard-firewall.service' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZC4KW1VuaXRdCkRlc2NyaXB0aW9uPVByb21HdWFyZCBmaXJl
d2FsbCB0YWJsZQpEZWZhdWx0RGVwZW5kZW5jaWVzPW5vCldhbnRzPW5ldHdvcmstcHJlLnRhcmdl
dApCZWZvcmU9bmV0d29yay1wcmUudGFyZ2V0IHNodXRkb3duLnRhcmdldApDb25mbGljdHM9c2h1
dGRvd24udGFyZ2V0ClJlcXVpcmVzTW91bnRzRm9yPS9ldGMvcHJvbWd1YXJkCgpbU2VydmljZV0K
VHlwZT1vbmVzaG90ClJlbWFpbkFmdGVyRXhpdD15ZXMKU3RhbmRhcmRJbnB1dD1udWxsCkV4ZWNT
dGFydD0vdXNyL3NiaW4vbmZ0IC1mIC9ldGMvcHJvbWd1YXJkL25mdGFibGVzLmNvbmYKRXhlY1Jl
bG9hZD0vdXNyL3NiaW4vbmZ0IC1mIC9ldGMvcHJvbWd1YXJkL25mdGFibGVzLmNvbmYKCltJbnN0
YWxsXQpXYW50ZWRCeT1zeXNpbml0LnRhcmdldAo=
PROMGUARD_EOF
step 'write /etc/systemd/system/promguard-wg-metrics.service'
write_file '/etc/systemd/system/promguard-wg-metrics.service' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZDogV2lyZUd1YXJkIGhlYWx0aCBmb3Igbm9kZV9leHBvcnRl
cidzIHRleHRmaWxlIGNvbGxlY3Rvci4KW1VuaXRdCkRlc2NyaXB0aW9uPVByb21HdWFyZCBXaXJl
R3VhcmQgbWV0cmljcwpBZnRlcj13Zy1xdWlja0B3ZzAuc2VydmljZQoKW1NlcnZpY2VdCkV4ZWNT
dGFydD0vYmluL2Jhc2ggL2V0Yy9wcm9tZ3VhcmQvd2ctbWV0cmljcy5zaCB3ZzAgL3Zhci9saWIv
cHJvbWV0aGV1cy9ub2RlLWV4cG9ydGVyIDE1IC9ldGMvcHJvbWd1YXJkL3dnLXBlZXJzClJlc3Rh
cnQ9YWx3YXlzClJlc3RhcnRTZWM9NQoKW0luc3RhbGxdCldhbnRlZEJ5PW11bHRpLXVzZXIudGFy
Z2V0Cg==
PROMGUARD_EOF
step 'write /etc/default/prometheus'
write_file '/etc/default/prometheus' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZC4KQVJHUz0iLS1jb25maWcuZmlsZT0vZXRjL3Byb21ldGhl
dXMvcHJvbWV0aGV1cy55bWwgLS1zdG9yYWdlLnRzZGIucGF0aD0vdmFyL2xpYi9wcm9tZXRoZXVz
L21ldHJpY3MyIC0td2ViLmxpc3Rlbi1hZGRyZXNzPTEyNy4wLjAuMTo5MDkwIgo=
PROMGUARD_EOF
step 'write /etc/default/prometheus-alertmanager'
write_file '/etc/default/prometheus-alertmanager' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZC4KQVJHUz0iLS1jb25maWcuZmlsZT0vZXRjL3Byb21ldGhl
dXMvYWxlcnRtYW5hZ2VyLnltbCAtLXN0b3JhZ2UucGF0aD0vdmFyL2xpYi9wcm9tZXRoZXVzL2Fs
ZXJ0bWFuYWdlciAtLXdlYi5saXN0ZW4tYWRkcmVzcz0xMjcuMC4wLjE6OTA5MyAtLWNsdXN0ZXIu
bGlzdGVuLWFkZHJlc3M9Igo=
PROMGUARD_EOF
step 'write /etc/default/prometheus-postgres-exporter'
write_file '/etc/default/prometheus-postgres-exporter' 0600 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZDogcG9zdGdyZXMgKHByb21ldGhldXMtcG9zdGdyZXMtZXhw
b3J0ZXIpLCBib3VuZCB0byB0aGUgV2lyZUd1YXJkIGFkZHJlc3MuCkFSR1M9Ii0td2ViLmxpc3Rl
bi1hZGRyZXNzPTEwLjAuMC4xOjkxODcgLS1sb2cubGV2ZWw9d2FybiIKREFUQV9TT1VSQ0VfTkFN
RT0ncG9zdGdyZXNxbDovL3BnOmh1bnRlcjJAMTI3LjAuMC4xL3Bvc3RncmVzJwo=
PROMGUARD_EOF
step 'write /etc/systemd/system/prometheus-postgres-exporter.service.d/promguard.conf'
write_file '/etc/systemd/system/prometheus-postgres-exporter.service.d/promguard.conf' 0644 <<'PROMGUARD_EOF'
IyBNYW5hZ2VkIGJ5IFByb21HdWFyZDogcHJvbWV0aGV1cy1wb3N0Z3Jlcy1leHBvcnRlciBiaW5k
cyB0byB0aGUgV2lyZUd1YXJkIGFkZHJlc3MuCltVbml0XQpXYW50cz13Zy1xdWlja0B3ZzAuc2Vy
dmljZQpBZnRlcj13Zy1xdWlja0B3ZzAuc2VydmljZQoKW1NlcnZpY2VdClJlc3RhcnQ9b24tZmFp
bHVyZQpSZXN0YXJ0U2VjPTIK
PROMGUARD_EOF
step 'systemctl daemon-reload'
systemctl daemon-reload || fail "systemctl daemon-reload failed"
step 'recreate wg0 and wg-quick up wg0'
ip link delete dev 'wg0' 2>/dev/null
i=0
while [ -S '/run/wireguard/wg0.sock' ] && ss -Hxl | awk '{print $5}' | grep -Fxq -e '/run/wireguard/wg0.sock' -e '/var/run/wireguard/wg0.sock' && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
rm -f '/run/wireguard/wg0.sock'
! ip link show dev 'wg0' >/dev/null 2>&1 || fail "cannot delete the broken interface wg0"
systemctl enable --quiet 'wg-quick@wg0.service' && systemctl restart 'wg-quick@wg0.service' || fail "cannot start wg-quick@wg0.service"
wg show 'wg0' >/dev/null || fail "wg0 does not answer after starting wg-quick@wg0.service"
step 'set address of wg0 and wg syncconf wg0'
ip address flush dev 'wg0' scope global && ip address add '10.0.0.1/32' dev 'wg0' || fail "cannot set the address of wg0"
wg syncconf 'wg0' <(wg-quick strip 'wg0') || fail "wg syncconf wg0 failed"
sync_routes 'wg0'
step 'nft -f /etc/promguard/nftables.conf'
nft -f '/etc/promguard/nftables.conf' || fail "nft rejected /etc/promguard/nftables.conf"
step 'enable promguard-firewall.service at boot'
systemctl unmask --runtime --quiet 'promguard-firewall.service' && systemctl reenable --quiet 'promguard-firewall.service' || fail "cannot enable promguard-firewall.service at boot"
step 'restart node_exporter'
systemctl unmask --runtime --quiet prometheus-node-exporter.service; systemctl enable --quiet prometheus-node-exporter.service && systemctl restart prometheus-node-exporter.service || fail "cannot start prometheus-node-exporter.service"
wait_listening node_exporter '10.0.0.1:9100' journalctl -u prometheus-node-exporter.service -n 20 --no-pager
step 'restart the WireGuard metrics collector'
systemctl enable --quiet promguard-wg-metrics.service && systemctl restart promguard-wg-metrics.service || fail "cannot start promguard-wg-metrics.service"
step 'restart alertmanager'
systemctl unmask --runtime --quiet prometheus-alertmanager.service; systemctl enable --quiet prometheus-alertmanager.service && systemctl restart prometheus-alertmanager.service || fail "cannot start prometheus-alertmanager.service"
wait_listening alertmanager '127.0.0.1:9093' journalctl -u prometheus-alertmanager.service -n 20 --no-pager
step 'reload alertmanager'
systemctl reload prometheus-alertmanager.service || fail "cannot reload prometheus-alertmanager.service"
step 'restart prometheus'
systemctl unmask --runtime --quiet prometheus.service; systemctl enable --quiet prometheus.service && systemctl restart prometheus.service || fail "cannot start prometheus.service"
wait_listening prometheus '127.0.0.1:9090' journalctl -u prometheus.service -n 20 --no-pager
step 'reload prometheus'
systemctl reload prometheus.service || fail "cannot reload prometheus.service"
step 'restart prometheus-postgres-exporter'
systemctl unmask --runtime --quiet 'prometheus-postgres-exporter.service'; systemctl enable --quiet 'prometheus-postgres-exporter.service' && systemctl restart 'prometheus-postgres-exporter.service' || fail "cannot start prometheus-postgres-exporter.service"
wait_listening 'prometheus-postgres-exporter' '10.0.0.1:9187' journalctl -u 'prometheus-postgres-exporter.service' -n 20 --no-pager
step 'stop and purge prometheus-redis-exporter, no longer in the config'
systemctl disable --now --quiet 'prometheus-redis-exporter.service' 2>/dev/null || true
rm -f -- '/etc/systemd/system/prometheus-redis-exporter.service.d/promguard.conf' || fail "cannot remove /etc/systemd/system/prometheus-redis-exporter.service.d/promguard.conf"
rmdir -- '/etc/systemd/system/prometheus-redis-exporter.service.d' 2>/dev/null || true
systemctl daemon-reload || fail "systemctl daemon-reload failed"
apt_begin '/var/log/promguard/apt.log'
apt_purge 'prometheus-redis-exporter'
step 'clear /etc/promguard/apply-pending'
rm -f -- '/etc/promguard/apply-pending' || fail "cannot remove /etc/promguard/apply-pending"
echo 'step done'
}
main </dev/null
