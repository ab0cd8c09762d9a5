# shellcheck shell=bash
# What `cargo xtask e2e --existing` compares on a lab host before
# PromGuard's `up` and after its `down` (the nftables ruleset is read from
# outside, in the host's network namespace, since nft may not be
# installed): packages with their dpkg status, enabled unit files (and
# /etc/systemd/system, where enabled instances such as wg-quick@wg0 show),
# ufw's status and rules and iptables' (ufw's rules as iptables reads
# them back), /etc/wireguard, the user's Prometheus config, /etc/default,
# and the places PromGuard writes to. No counters, PIDs or times, so that
# two snapshots of an unchanged host are equal. Runs as root inside the
# host.
set -uo pipefail

echo '## packages (dpkg status, name, version)'
dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n'

echo '## enabled unit files'
systemctl list-unit-files --state=enabled --no-legend --no-pager

echo '## /etc/systemd/system'
find /etc/systemd/system -mindepth 1 -printf '%p %M %l\n' | sort
find /etc/systemd/system -type f -exec sha256sum {} + | sort -k 2

echo '## ufw'
if command -v ufw >/dev/null; then
  ufw status verbose
  for rules in /etc/ufw/user.rules /etc/ufw/user6.rules; do
    echo "# $rules"
    cat "$rules"
  done
else
  echo 'ufw is not installed'
fi

# Chain counters ([packets:bytes]) and the dated comments left out.
for save in iptables-save ip6tables-save; do
  echo "## $save"
  if command -v "$save" >/dev/null; then
    "$save" | sed -e '/^#/d' -e 's/ \[[0-9]*:[0-9]*\]$//'
  else
    echo "$save is not installed"
  fi
done

echo '## /etc/wireguard'
if [ -d /etc/wireguard ]; then
  find /etc/wireguard -printf '%p %M %u:%g\n' | sort
  find /etc/wireguard -type f -exec sha256sum {} + | sort -k 2
else
  echo 'no /etc/wireguard'
fi

echo '## /etc/prometheus/prometheus.yml'
if [ -f /etc/prometheus/prometheus.yml ]; then
  sha256sum /etc/prometheus/prometheus.yml
else
  echo 'no /etc/prometheus/prometheus.yml'
fi

echo '## /etc/default'
sha256sum /etc/default/* | sort -k 2

echo "## PromGuard's places"
for place in /etc/promguard /var/log/promguard /var/lib/prometheus/node-exporter /etc/prometheus; do
  if [ -e "$place" ]; then
    # The WireGuard collector writes a temporary file and renames it
    # every 15 s: the moment is not state.
    find "$place" ! -name '.wireguard.prom.*' -printf '%p %M %u:%g\n' | sort
  else
    echo "no $place"
  fi
done
