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
step 'start prometheus'
systemctl unmask --runtime --quiet prometheus.service; systemctl enable --quiet prometheus.service && systemctl restart prometheus.service || fail "cannot start prometheus.service"
wait_listening prometheus '127.0.0.1:9090' journalctl -u prometheus.service -n 20 --no-pager
step 'reload prometheus'
systemctl reload prometheus.service || fail "cannot reload prometheus.service"
echo 'step done'
}
main </dev/null
