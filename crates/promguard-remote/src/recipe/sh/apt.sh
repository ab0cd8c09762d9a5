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
