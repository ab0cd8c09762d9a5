# shellcheck shell=bash
# The facts script's body (src/recipe/facts.rs): reports a host's state as
# lines the parser there reads. facts_script() puts it in a function after
# setting iface, header, marker, marker_lines, node_exporter, prometheus and
# the arrays paths, programs and units (every value quoted).
# shellcheck disable=SC2154
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "$header"
if [ -d /run/systemd/system ]; then sd=1; echo 'systemd yes'; else sd=0; echo 'systemd no'; fi
# One sha256sum for every file that exists (one process, not one per file).
present=()
for f in "${paths[@]}"; do
  if [ -f "$f" ]; then present+=("$f"); else echo "file missing $f"; fi
done
if [ "${#present[@]}" -gt 0 ]; then
  sha256sum -- "${present[@]}" | while read -r h f; do echo "file $h $f"; done
fi
for p in "${programs[@]}"; do
  if [ -x "$p" ]; then echo "program yes $p"; else echo "program no $p"; fi
done
# wireguard-go's control socket: `listening` when a process has it open.
# ss prints the path the daemon bound, /var/run being a link to /run.
sock="/run/wireguard/$iface.sock"
if [ ! -S "$sock" ]; then echo 'socket absent'
elif ss -Hxl 2>/dev/null | awk '{print $5}' | grep -Fxq -e "$sock" -e "/var$sock"; then echo 'socket listening'
else echo 'socket stale'; fi
if link=$(ip -o link show dev "$iface" 2>/dev/null) && [ -n "$link" ]; then
  echo 'interface present'
  # The administrative state is the UP flag in `<...>`: a `wg-quick up`
  # cut short leaves the link without it (and often without addresses).
  flags=${link#*<}; flags=${flags%%>*}
  case ",$flags," in *,UP,*) echo 'link up';; *) echo 'link down';; esac
  if wg show "$iface" >/dev/null 2>&1; then echo 'wg answers'; else echo 'wg silent'; fi
  ip -o address show dev "$iface" | while read -r _ _ _ addr _; do echo "address $addr"; done
else
  echo 'interface missing'
fi
if nft list table inet promguard >/dev/null 2>&1; then echo 'firewall loaded'; else echo 'firewall missing'; fi
process() {
  if [ "$sd" = 1 ]; then
    if systemctl is-active --quiet "$2"; then echo "process $1 running"; else echo "process $1 stopped"; fi
    return
  fi
  pid=
  [ -r "/run/promguard/$1.pid" ] && read -r pid < "/run/promguard/$1.pid"
  case "$pid" in ''|*[!0-9]*) echo "process $1 stopped"; return;; esac
  # /proc files have size 0, so read the command line instead of `[ -s ]`;
  # a zombie's is empty.
  cmd=$(tr '\0\n' '  ' < "/proc/$pid/cmdline" 2>/dev/null)
  if kill -0 "$pid" 2>/dev/null && [ -n "$cmd" ]; then
    echo "process $1 running $cmd"
  else
    echo "process $1 stopped"
  fi
}
process "$node_exporter" prometheus-node-exporter.service
process "$prometheus" prometheus.service
if [ "$sd" = 1 ]; then
  for u in "${units[@]}"; do
    if systemctl is-enabled --quiet "$u" 2>/dev/null; then echo "enabled yes $u"; else echo "enabled no $u"; fi
  done
fi
# The apply marker, line by line. One line more than a marker of ours can
# hold is enough to tell that a longer one is not ours.
if [ -e "$marker" ] || [ -L "$marker" ]; then
  echo 'apply-pending present'
  head -n "$marker_lines" -- "$marker" 2>/dev/null | while IFS= read -r l || [ -n "$l" ]; do printf 'apply-pending-line %s\n' "$l"; done
else
  echo 'apply-pending absent'
fi
echo 'end'
