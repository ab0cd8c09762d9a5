# shellcheck shell=bash
# The facts script's body (src/recipe/facts.rs): reports a host's state as
# lines the parser there reads. facts_script() puts it in a function after
# setting iface, header, marker, marker_lines and the arrays paths,
# programs, units, daemons and daemon_units (the daemons' names in facts
# and PID files, and their units, in the same order; every value quoted),
# and on hosts PromGuard did not create guest_port, guest_manifest and
# guest_lines.
#
# It runs on every host in every run, so it starts as few processes as it
# can: bash builtins and files of /proc instead of ss, tr, awk, grep, head
# and pipelines; one sha256sum for every file, one `ip` for the link and
# its addresses, `wg` only when the interface has no listening
# wireguard-go socket, one `nft`, and on systemd hosts one `systemctl
# is-active` for all daemons. What each line means is unchanged.
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
  sums=$(sha256sum -- "${present[@]}")
  while read -r h f; do echo "file $h $f"; done <<< "$sums"
fi
for p in "${programs[@]}"; do
  if [ -x "$p" ]; then echo "program yes $p"; else echo "program no $p"; fi
done
# wireguard-go's control socket: `listening` when a process has it open.
# /proc/net/unix (this network namespace's sockets, what `ss -xl` reads)
# flags a listening socket 00010000 and names the path the daemon bound,
# /var/run being a link to /run.
sock="/run/wireguard/$iface.sock"
socket=absent
if [ -S "$sock" ]; then
  socket=stale
  while read -r _ _ _ flags _ _ _ bound; do
    if [ "$flags" = 00010000 ] && { [ "$bound" = "$sock" ] || [ "$bound" = "/var$sock" ]; }; then
      socket=listening
      break
    fi
  done < /proc/net/unix
fi
echo "socket $socket"
# One `ip address show`: its first line is the link's, the others its
# addresses (`inet ADDR ...`, `inet6 ADDR ...`) and their details.
# (Errors are silenced outside the command substitution: a redirection
# inside it would cost bash one more fork.)
if { link=$(ip address show dev "$iface"); } 2>/dev/null && [ -n "$link" ]; then
  echo 'interface present'
  # The administrative state is the UP flag in `<...>`: a `wg-quick up`
  # cut short leaves the link without it (and often without addresses).
  flags=${link%%$'\n'*}; flags=${flags#*<}; flags=${flags%%>*}
  case ",$flags," in *,UP,*) echo 'link up';; *) echo 'link down';; esac
  # `wg show` asks wireguard-go's socket first and answers through it
  # when a process listens there; only otherwise does it ask the kernel
  # (a kernel interface), so only then is it run. A dead wireguard-go
  # leaves no listener, so it still reads as silent; a listener that
  # accepts but never answers (a stopped wireguard-go, which `wg show`
  # would wait for forever) reads as answering.
  if [ "$socket" = listening ] || wg show "$iface" >/dev/null 2>&1; then echo 'wg answers'; else echo 'wg silent'; fi
  while read -r family addr _; do
    case "$family" in inet|inet6) echo "address $addr";; esac
  done <<< "$link"
else
  echo 'interface missing'
fi
# The exporters PromGuard set up here so far, by package: its drop-in
# (systemd) or environment file (without), so that one dropped from the
# config is found and retired. Globs, no `ls`.
for f in /etc/systemd/system/*.service.d/promguard.conf /etc/promguard/exporters/*.env; do
  [ -f "$f" ] || continue
  case "$f" in
    /etc/systemd/system/*) p=${f#/etc/systemd/system/}; p=${p%.service.d/promguard.conf};;
    *) p=${f##*/}; p=${p%.env};;
  esac
  echo "exporter-config $p"
done
if nft list table inet promguard >/dev/null 2>&1; then echo 'firewall loaded'; else echo 'firewall missing'; fi
if [ "$sd" = 1 ]; then
  # One `systemctl is-active` for every daemon: a state per unit, in
  # order; running is what `is-active --quiet` accepts.
  { states=$(systemctl is-active "${daemon_units[@]}"); } 2>/dev/null
  for name in "${daemons[@]}"; do
    state=${states%%$'\n'*}
    case "$states" in *$'\n'*) states=${states#*$'\n'};; *) states=;; esac
    case "$state" in
      active|reloading|refreshing) echo "process $name running";;
      *) echo "process $name stopped";;
    esac
  done
else
  for name in "${daemons[@]}"; do
    pid=
    [ -r "/run/promguard/$name.pid" ] && read -r pid < "/run/promguard/$name.pid"
    case "$pid" in ''|*[!0-9]*) echo "process $name stopped"; continue;; esac
    # /proc files have size 0, so read the command line instead of
    # `[ -s ]`; a zombie's is empty. Its NULs (and any newline) become
    # spaces, as `tr '\0\n' '  '` would make them.
    cmd=
    if [ -r "/proc/$pid/cmdline" ]; then
      while IFS= read -r -d '' arg || [ -n "$arg" ]; do cmd+="${arg//$'\n'/ } "; done 2>/dev/null < "/proc/$pid/cmdline"
    fi
    if kill -0 "$pid" 2>/dev/null && [ -n "$cmd" ]; then
      echo "process $name running $cmd"
    else
      echo "process $name stopped"
    fi
  done
fi
if [ "$sd" = 1 ]; then
  # One call per unit: with several, `systemctl is-enabled` prints the
  # states of units known only to SysV init first, out of order.
  for u in "${units[@]}"; do
    if systemctl is-enabled --quiet "$u" 2>/dev/null; then echo "enabled yes $u"; else echo "enabled no $u"; fi
  done
fi
# The apply marker, line by line. One line more than a marker of ours can
# hold is enough to tell that a longer one is not ours.
if [ -e "$marker" ] || [ -L "$marker" ]; then
  echo 'apply-pending present'
  n=0
  if [ -r "$marker" ]; then
    while [ "$n" -lt "$marker_lines" ] && { IFS= read -r l || [ -n "$l" ]; }; do
      printf 'apply-pending-line %s\n' "$l"
      n=$((n + 1))
    done 2>/dev/null < "$marker"
  fi
else
  echo 'apply-pending absent'
fi
# On a host PromGuard is a guest on: whether ufw is on (as its boot
# script decides, from ufw.conf), whether something holds the WireGuard
# UDP port (this namespace's sockets, as `ss -uln` reads them), and the
# guest manifest.
if [ -n "$guest_port" ]; then
  echo 'guest yes'
  ufw=inactive
  if [ -x /usr/sbin/ufw ] && [ -r /etc/ufw/ufw.conf ]; then
    while IFS= read -r l; do
      case "$l" in ENABLED=yes) ufw=active;; esac
    done < /etc/ufw/ufw.conf
  fi
  echo "ufw $ufw"
  printf -v hex '%04X' "$guest_port"
  used=free
  for t in /proc/net/udp /proc/net/udp6; do
    [ -r "$t" ] || continue
    while read -r _ local _; do
      case "$local" in *:"$hex") used=used; break;; esac
    done < "$t"
  done
  echo "udp-port $used"
  if [ -f "$guest_manifest" ]; then
    n=0
    while [ "$n" -lt "$guest_lines" ] && { IFS= read -r l || [ -n "$l" ]; }; do
      printf 'guest-line %s\n' "$l"
      n=$((n + 1))
    done < "$guest_manifest"
  fi
fi
echo 'end'
