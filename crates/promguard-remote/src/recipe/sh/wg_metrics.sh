#!/bin/bash
# shellcheck shell=bash
# PromGuard's WireGuard metrics collector (src/recipe/script.rs installs it
# at /etc/promguard/wg-metrics.sh and runs it as a daemon): every INTERVAL
# seconds it writes INTERFACE's per-peer health for node_exporter's textfile
# collector, atomically (a temporary file renamed into place), so a scrape
# never sees half a file.
#
# Usage: wg-metrics.sh INTERFACE TEXTFILE_DIR INTERVAL PEER_NAMES
# (INTERVAL 0 collects once and exits.)
#
# It reads only `wg show INTERFACE latest-handshakes|transfer|endpoints|
# listen-port`, never `dump` or the config: no private or preshared key
# passes through it. PEER_NAMES maps public keys to host names ("KEY NAME"
# per line, written by PromGuard). Every value is checked before it is
# written: keys are 44 base64 characters, numbers are digits, names are
# [a-z0-9-]; anything else is skipped, so a label never holds text a host
# or a file made up. The freshness metric is written only after a
# complete collection, so a collector that fails or hangs shows as stale.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
iface=$1 dir=$2 interval=$3 names_file=$4
case "$iface" in ''|*[!a-z0-9_=+.-]*) echo "bad interface name" >&2; exit 2;; esac
case "$interval" in ''|*[!0-9]*) echo "bad interval" >&2; exit 2;; esac

is_key() { [ "${#1}" -eq 44 ] && case "$1" in *[!A-Za-z0-9+/=]*) false;; *) true;; esac; }
is_number() { case "$1" in ''|*[!0-9]*) false;; *) [ "${#1}" -le 20 ];; esac; }
is_name() { case "$1" in ''|*[!a-z0-9-]*) false;; *) [ "${#1}" -le 63 ];; esac; }

collect() {
  local hs tr ep port key value rx tx name labels now
  hs=$(wg show "$iface" latest-handshakes) || return 1
  tr=$(wg show "$iface" transfer) || return 1
  ep=$(wg show "$iface" endpoints) || return 1
  port=$(wg show "$iface" listen-port) || return 1
  declare -A names=() handshake=() received=() sent=() endpoint=()
  if [ -r "$names_file" ]; then
    while read -r key name _; do
      is_key "$key" && is_name "$name" && names[$key]=$name
    done < "$names_file"
  fi
  while read -r key value _; do
    is_key "$key" && is_number "$value" && handshake[$key]=$value
  done <<< "$hs"
  while read -r key rx tx _; do
    is_key "$key" && is_number "$rx" && is_number "$tx" && received[$key]=$rx && sent[$key]=$tx
  done <<< "$tr"
  while read -r key value _; do
    if is_key "$key"; then
      if [ "$value" = "(none)" ]; then endpoint[$key]=0; else endpoint[$key]=1; fi
    fi
  done <<< "$ep"
  printf '# HELP wireguard_latest_handshake_seconds Unix time of the latest handshake with the peer (0: never).\n'
  printf '# TYPE wireguard_latest_handshake_seconds gauge\n'
  for key in "${!handshake[@]}"; do
    labels="interface=\"$iface\",public_key=\"$key\",peer=\"${names[$key]:-unknown}\""
    printf 'wireguard_latest_handshake_seconds{%s} %s\n' "$labels" "${handshake[$key]}"
  done
  printf '# HELP wireguard_received_bytes_total Bytes received from the peer.\n'
  printf '# TYPE wireguard_received_bytes_total counter\n'
  for key in "${!received[@]}"; do
    labels="interface=\"$iface\",public_key=\"$key\",peer=\"${names[$key]:-unknown}\""
    printf 'wireguard_received_bytes_total{%s} %s\n' "$labels" "${received[$key]}"
  done
  printf '# HELP wireguard_sent_bytes_total Bytes sent to the peer.\n'
  printf '# TYPE wireguard_sent_bytes_total counter\n'
  for key in "${!sent[@]}"; do
    labels="interface=\"$iface\",public_key=\"$key\",peer=\"${names[$key]:-unknown}\""
    printf 'wireguard_sent_bytes_total{%s} %s\n' "$labels" "${sent[$key]}"
  done
  printf '# HELP wireguard_peer_endpoint_set Whether the peer has an endpoint (1) or not (0).\n'
  printf '# TYPE wireguard_peer_endpoint_set gauge\n'
  for key in "${!endpoint[@]}"; do
    labels="interface=\"$iface\",public_key=\"$key\",peer=\"${names[$key]:-unknown}\""
    printf 'wireguard_peer_endpoint_set{%s} %s\n' "$labels" "${endpoint[$key]}"
  done
  printf '# HELP wireguard_peers Peers configured on the interface.\n'
  printf '# TYPE wireguard_peers gauge\n'
  printf 'wireguard_peers{interface="%s"} %s\n' "$iface" "${#handshake[@]}"
  if is_number "$port"; then
    printf '# HELP wireguard_listen_port UDP port the interface listens on.\n'
    printf '# TYPE wireguard_listen_port gauge\n'
    printf 'wireguard_listen_port{interface="%s"} %s\n' "$iface" "$port"
  fi
  printf -v now '%(%s)T' -1
  printf '# HELP promguard_wireguard_collector_last_run_timestamp_seconds Unix time of the collector'"'"'s latest complete run.\n'
  printf '# TYPE promguard_wireguard_collector_last_run_timestamp_seconds gauge\n'
  printf 'promguard_wireguard_collector_last_run_timestamp_seconds %s\n' "$now"
}

mkdir -p "$dir" || exit 1
tmp="$dir/.wireguard.prom.$$"
trap 'rm -f "$tmp"' EXIT
trap 'exit 0' TERM INT
while :; do
  if collect > "$tmp"; then
    chmod 0644 "$tmp" && mv -f "$tmp" "$dir/wireguard.prom"
  else
    rm -f "$tmp"
  fi
  [ "$interval" = 0 ] && exit 0
  sleep "$interval" &
  wait $!
done
