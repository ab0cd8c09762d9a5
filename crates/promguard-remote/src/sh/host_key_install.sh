# shellcheck shell=sh
# Puts the key host_key_stage.sh made in place of the served one ($1: the
# key file) and has sshd load it ($2: the listener's PID).
set -eu
found=$1
[ -f "$found.promguard-new" ] || { echo "the new host key $found.promguard-new is gone" >&2; exit 5; }
mv -f "$found.promguard-new.pub" "$found.pub"
mv -f "$found.promguard-new" "$found"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl reload ssh.service 2>/dev/null || systemctl reload sshd.service
else
  kill -HUP "$2"
fi
