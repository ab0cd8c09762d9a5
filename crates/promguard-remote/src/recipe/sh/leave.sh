# shellcheck shell=bash
# Removes PromGuard from a host it did not create (src/recipe/guest.rs):
# undoes what the guest manifest lists, newest first, and nothing else.
# Idempotent: a second run, or a run after one cut short, finds less to
# do. Inside the leave script's main function; the caller sets
# guest_manifest, guest_saved, guest_header and the array guest_paths
# (files PromGuard manages, for hosts whose manifest was lost), and
# prelude.sh's functions are defined. Checked by shellcheck in cargo
# xtask test. guest_files_only=1 (set by the unit test that runs this
# script in a scratch directory) skips everything but the files.
# shellcheck disable=SC2154
[ -f "$guest_manifest" ] || { echo 'leave nothing'; return 0; }
read -r first < "$guest_manifest" || first=
[ "$first" = "$guest_header" ] || fail "$guest_manifest is not a manifest this version of PromGuard reads"
mapfile -t lines < "$guest_manifest"
units=() rules=() created=() saved=() packages=() dirs=()
for ((i = ${#lines[@]} - 1; i > 0; i--)); do
  l=${lines[i]}
  case "$l" in
    "unit "*) units+=("${l#unit }");;
    "ufw "*) rules+=("${l#ufw }");;
    "created "*) created+=("${l#created }");;
    "saved "*) saved+=("${l#saved }");;
    "package "*) packages+=("${l#package }");;
    "dir "*) dirs+=("${l#dir }");;
    *) fail "unknown line in $guest_manifest: $l";;
  esac
done
sd=0; [ -d /run/systemd/system ] && sd=1
host=1; [ "${guest_files_only:-}" = 1 ] && { host=0; sd=0; }
step "stop PromGuard's units"
for u in "${units[@]}"; do
  if [ "$sd" = 1 ]; then systemctl disable --now --quiet "$u" 2>/dev/null || true; fi
done
if [ "$host" = 1 ] && [ "$sd" = 0 ]; then
  for pidfile in /run/promguard/*.pid; do
    [ -f "$pidfile" ] || continue
    read -r pid < "$pidfile" || pid=
    # Each daemon leads its own session (setsid): its group goes too,
    # the collector's sleep included.
    case "$pid" in ''|*[!0-9]*) ;; *) kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true;; esac
    rm -f -- "$pidfile"
  done
fi
for f in "${created[@]}"; do
  [ "$host" = 1 ] || break
  case "$f" in
    /etc/wireguard/*.conf)
      i=${f##*/}; i=${i%.conf}
      if ip link show dev "$i" >/dev/null 2>&1; then
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wg-quick down "$i" >/dev/null 2>&1 || ip link delete dev "$i" 2>/dev/null || true
      fi;;
  esac
done
step "remove PromGuard's firewall table"
if [ "$host" = 1 ] && command -v nft >/dev/null 2>&1 && nft list table inet promguard >/dev/null 2>&1; then
  nft delete table inet promguard || fail "cannot delete the nftables table inet promguard"
fi
step "remove PromGuard's ufw rules"
for r in "${rules[@]}"; do
  [ "$host" = 1 ] || break
  # The rule was added with these words; they are split on purpose.
  # shellcheck disable=SC2086
  ufw delete $r >/dev/null 2>&1 || ufw --force delete $r >/dev/null 2>&1 || true
done
step "restore the host's files"
for f in "${created[@]}"; do rm -f -- "$f"; done
for f in "${saved[@]}"; do
  if [ -e "$guest_saved$f" ] || [ -L "$guest_saved$f" ]; then
    mv -f -- "$guest_saved$f" "$f" || fail "cannot put back $f"
  fi
done
[ "$host" = 1 ] && rm -f -- /var/lib/prometheus/node-exporter/wireguard.prom
if [ "$sd" = 1 ]; then
  systemctl daemon-reload || fail "systemctl daemon-reload failed"
  # A daemon of the host's whose settings PromGuard had changed runs with
  # the host's own again.
  for f in "${saved[@]}"; do
    case "$f" in
      /etc/default/prometheus-node-exporter) u=prometheus-node-exporter.service;;
      /etc/default/prometheus) u=prometheus.service;;
      /etc/default/prometheus-alertmanager) u=prometheus-alertmanager.service;;
      *) continue;;
    esac
    if systemctl is-active --quiet "$u"; then systemctl restart "$u" || fail "cannot restart $u"; fi
  done
fi
if [ "$host" = 1 ] && [ "${#packages[@]}" -gt 0 ]; then
  step "remove the packages PromGuard installed"
  installed=()
  for p in "${packages[@]}"; do
    if dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^i'; then installed+=("$p"); fi
  done
  if [ "${#installed[@]}" -gt 0 ]; then
    # dpkg, not apt-get: it refuses instead of also removing a package of
    # the host's that came to depend on one of these.
    DEBIAN_FRONTEND=noninteractive dpkg --purge "${installed[@]}" > /tmp/promguard-leave-dpkg.log 2>&1 \
      || { tail -n 20 /tmp/promguard-leave-dpkg.log >&2; rm -f /tmp/promguard-leave-dpkg.log; fail "dpkg --purge ${installed[*]} failed (a package of the host's may depend on one of them)"; }
    rm -f /tmp/promguard-leave-dpkg.log
  fi
  # dpkg leaves the directories of purged packages that still hold
  # files; the recipe's own are gone by now.
  [ "$sd" = 1 ] && systemctl daemon-reload
fi
step "remove PromGuard's directories"
rm -rf -- "$guest_saved"
rm -f -- "$guest_manifest" "${guest_manifest%/*}/apply-pending"
for d in "${dirs[@]}"; do
  [ -d "$d" ] && { rmdir -- "$d" 2>/dev/null || echo "promguard: left $d: it holds files PromGuard did not put there" >&2; }
done
echo 'leave done'
