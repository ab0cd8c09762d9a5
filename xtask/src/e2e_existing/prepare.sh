# shellcheck shell=bash
# Prepares one lab host of `cargo xtask e2e --existing` the way its user
# runs it, long before PromGuard sees it. Runs as root inside the host,
# with what to make of it and its values as arguments:
#   web PORT       ufw active (incoming denied but SSH and PORT) and a web
#                  server of the host's own on PORT
#   wireguard PORT the host's own WireGuard interface wg0 on UDP PORT, up
#                  and enabled at boot
#   sudo USER      USER logs in with root's login key and has passwordless
#                  sudo, USER-nosudo logs in with it too but has no sudo;
#                  root may not log in over SSH
#   monitor YAML   Debian's prometheus, running with YAML as its config
#   plain          nothing beyond the image
# Packages come from the lab's mirror, in one apt run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

what=$1
value=${2:-}

# apt_install PACKAGE...: one apt run; its output only when it fails.
apt_install() {
  local log=/var/log/lab-apt.log
  if ! { apt-get -q update && apt-get -q -y --no-install-recommends install "$@"; } >"$log" 2>&1; then
    echo "lab: apt-get install $* failed; the end of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
}

case $what in
web)
  apt_install ufw
  mkdir -p /srv/www
  echo "the web server of $(hostname)" >/srv/www/index.html
  cat >/etc/systemd/system/lab-web.service <<UNIT
[Unit]
Description=The host's own web server
After=network.target

[Service]
User=nobody
ExecStart=/usr/bin/python3 -m http.server $value --directory /srv/www

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now --quiet lab-web.service
  ufw default deny incoming >/dev/null
  ufw default allow outgoing >/dev/null
  ufw allow 22/tcp >/dev/null
  ufw allow "$value/tcp" >/dev/null
  ufw --force enable >/dev/null
  ;;
wireguard)
  apt_install wireguard-tools
  umask 077
  private=$(wg genkey)
  peer=$(wg genkey | wg pubkey)
  cat >/etc/wireguard/wg0.conf <<CONF
# The host's own VPN, set up long before PromGuard.
[Interface]
Address = 10.99.0.1/24
ListenPort = $value
PrivateKey = $private

[Peer]
PublicKey = $peer
AllowedIPs = 10.99.0.2/32
CONF
  systemctl enable --now --quiet wg-quick@wg0.service
  ;;
sudo)
  useradd --create-home --shell /bin/bash "$value"
  install -d -m 700 -o "$value" -g "$value" "/home/$value/.ssh"
  install -m 600 -o "$value" -g "$value" /root/.ssh/authorized_keys "/home/$value/.ssh/authorized_keys"
  echo "$value ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/90-$value"
  chmod 440 "/etc/sudoers.d/90-$value"
  visudo -qcf "/etc/sudoers.d/90-$value"
  useradd --create-home --shell /bin/bash "$value-nosudo"
  install -d -m 700 -o "$value-nosudo" -g "$value-nosudo" "/home/$value-nosudo/.ssh"
  install -m 600 -o "$value-nosudo" -g "$value-nosudo" /root/.ssh/authorized_keys "/home/$value-nosudo/.ssh/authorized_keys"
  printf '# Root never logs in over SSH here.\nPermitRootLogin no\n' >/etc/ssh/sshd_config.d/10-no-root.conf
  systemctl reload ssh.service
  ;;
monitor)
  apt_install prometheus
  printf '%s' "$value" >/etc/prometheus/prometheus.yml
  promtool check config /etc/prometheus/prometheus.yml >/dev/null
  systemctl enable --quiet prometheus.service
  systemctl restart prometheus.service
  for _ in $(seq 120); do
    if curl -fsS --max-time 1 http://127.0.0.1:9090/-/ready >/dev/null 2>&1; then
      exit 0
    fi
    sleep 0.5
  done
  echo "lab: prometheus is not ready 60 s after its start" >&2
  exit 1
  ;;
plain) ;;
*)
  echo "lab: no such kind of host: $what" >&2
  exit 2
  ;;
esac
