# shellcheck shell=bash
# Bookkeeping on hosts PromGuard did not create (src/recipe/guest.rs): the
# guest manifest lists, before each change is made, what PromGuard adds
# to the host, so that leave.sh can take exactly that away again, even
# after a run that was cut short. Part of the apply scripts of such hosts,
# inside their main function, after prelude.sh; checked by shellcheck in
# cargo xtask test. The caller sets guest_manifest and guest_saved.
# shellcheck disable=SC2154
# guest_note LINE: appends LINE to the manifest unless it is there, and
# flushes it before the change it announces is made.
guest_note() {
  if [ -f "$guest_manifest" ] && grep -Fxq -- "$1" "$guest_manifest"; then return 0; fi
  printf '%s\n' "$1" >> "$guest_manifest" || fail "cannot write $guest_manifest"
  sync -- "$guest_manifest" || fail "cannot flush $guest_manifest"
}
# guest_begin: the manifest's own directory is the first thing noted.
guest_begin() {
  d=${guest_manifest%/*}
  if [ ! -d "$d" ]; then
    mkdir -p -- "$d" || fail "cannot create $d"
    printf '%s\ndir %s\n' "$guest_header" "$d" > "$guest_manifest" || fail "cannot write $guest_manifest"
    sync -- "$guest_manifest" "$d" || fail "cannot flush $guest_manifest"
  fi
  [ -f "$guest_manifest" ] || guest_note "$guest_header"
}
# guest_dirs PATH: notes every missing ancestor of PATH, outermost first.
guest_dirs() {
  p=${1%/*} missing=()
  while [ -n "$p" ] && [ ! -d "$p" ]; do missing=("$p" "${missing[@]}"); p=${p%/*}; done
  for p in "${missing[@]}"; do guest_note "dir $p"; done
}
# guest_file PATH: before PATH is first written, notes it as created, or
# saves a copy of the host's own file and notes it as saved.
guest_file() {
  if [ -f "$guest_manifest" ] && { grep -Fxq -- "created $1" "$guest_manifest" || grep -Fxq -- "saved $1" "$guest_manifest"; }; then return 0; fi
  if [ -e "$1" ] || [ -L "$1" ]; then
    mkdir -p -- "$guest_saved${1%/*}" || fail "cannot create $guest_saved${1%/*}"
    cp -a -- "$1" "$guest_saved$1" || fail "cannot save a copy of $1"
    sync -- "$guest_saved$1" || fail "cannot flush the copy of $1"
    guest_note "saved $1"
  else
    guest_dirs "$1"
    guest_note "created $1"
  fi
}
# guest_units UNIT...: notes the units that are not enabled yet, before
# they are enabled.
guest_units() {
  for u in "$@"; do
    systemctl is-enabled --quiet "$u" 2>/dev/null || guest_note "unit $u"
  done
}
# guest_packages_before / guest_packages_after: packages installed in
# between (with what apt pulled in) are noted; those the host had stay.
guest_packages_before() {
  guest_had=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 2>/dev/null) || fail "dpkg-query failed"
}
guest_packages_after() {
  now=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 2>/dev/null) || fail "dpkg-query failed"
  declare -A had=()
  while read -r status name; do
    [ "$status" = ii ] && had[$name]=1
  done <<< "$guest_had"
  while read -r status name; do
    if [ "$status" = ii ] && [ -z "${had[$name]:-}" ]; then guest_note "package $name"; fi
  done <<< "$now"
}
# guest_ufw ARG...: adds one ufw rule, noted first.
guest_ufw() {
  guest_note "ufw $*"
  ufw "$@" >/dev/null || fail "ufw $* failed"
}
# guest_report: the manifest, for the state file on PromGuard's side.
guest_report() {
  if [ -f "$guest_manifest" ]; then
    while IFS= read -r l; do printf 'guest-manifest %s\n' "$l"; done < "$guest_manifest"
  fi
}
