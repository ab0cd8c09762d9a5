# shellcheck shell=bash
# What `cargo xtask e2e --existing` compares on a lab host before
# PromGuard's `up` and after its `down` (the nftables ruleset is read from
# outside, in the host's network namespace, since nft may not be
# installed): packages with their dpkg status, enabled unit files, ufw's
# status and rules, /etc/wireguard and the user's Prometheus config. No
# counters, PIDs or times, so that two snapshots of an unchanged host are
# equal. Runs as root inside the host.
set -uo pipefail

echo '## packages (dpkg status, name, version)'
dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n'

echo '## enabled unit files'
systemctl list-unit-files --state=enabled --no-legend --no-pager

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
