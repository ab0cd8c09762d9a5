# shellcheck shell=bash
# Route upkeep after `wg syncconf`, which adds no routes for new peers.
# Part of every apply script PromGuard generates (src/recipe/script.rs), inside
# its main function; checked by shellcheck in cargo xtask test.
# sync_routes IFACE: a route per AllowedIPs entry, none for removed peers.
sync_routes() {
  allowed=" $(wg show "$1" allowed-ips | cut -f 2 | tr '\n' ' ') "
  for net in $allowed; do
    [ "$net" = "(none)" ] || ip route replace "$net" dev "$1" || fail "cannot add a route to $net via $1"
  done
  for fam in 4 6; do
    ip "-$fam" route show dev "$1" | while read -r dst rest; do
      case " $rest " in *" proto kernel "*) continue;; esac
      case "$dst" in */*) net=$dst;; *) if [ "$fam" = 4 ]; then net=$dst/32; else net=$dst/128; fi;; esac
      case "$allowed" in *" $net "*) ;; *) ip "-$fam" route del "$dst" dev "$1" || true;; esac
    done
  done
}
