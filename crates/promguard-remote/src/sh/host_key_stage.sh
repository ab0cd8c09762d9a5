# shellcheck shell=sh
# Finds the key file sshd serves ($1: the presented key's base64 blob), makes
# a new key beside it ($2...: ssh-keygen type arguments) without serving it
# yet, and prints the listener's PID, the key file and the new public key.
set -eu
old=$1
shift
listener=
for dir in /proc/[0-9]*; do
  exe=$(readlink "$dir/exe" 2>/dev/null) || continue
  case "$exe" in */sshd) ;; *) continue ;; esac
  ppid=$(sed -n 's/^PPid:[[:space:]]*//p' "$dir/status" 2>/dev/null) || continue
  parent=$(readlink "/proc/$ppid/exe" 2>/dev/null) || parent=
  case "$parent" in */sshd) continue ;; esac
  listener=${dir#/proc/}
  break
done
if [ -z "$listener" ]; then echo "no listening sshd process found" >&2; exit 3; fi
# sshd rewrites its title ("sshd: /usr/sbin/sshd -D -f FILE [listener] ..."),
# so the arguments are split at blanks as well as at NULs.
config=$(tr '\0' ' ' < "/proc/$listener/cmdline" | tr -s ' ' '\n' | sed -n '/^-f$/{n;p;q;}')
if [ -n "$config" ]; then keys=$(sshd -T -f "$config"); else keys=$(sshd -T); fi
found=
for key in $(printf '%s\n' "$keys" | awk '$1 == "hostkey" { print $2 }'); do
  [ -f "$key" ] || continue
  if [ "$(ssh-keygen -y -f "$key" | awk '{ print $2 }')" = "$old" ]; then found=$key; break; fi
done
if [ -z "$found" ]; then echo "none of sshd's HostKey files holds the key it presented" >&2; exit 4; fi
umask 077
rm -f "$found.promguard-new" "$found.promguard-new.pub"
ssh-keygen -q "$@" -N '' -C "root@$(hostname)" -f "$found.promguard-new"
chmod 644 "$found.promguard-new.pub"
echo "listener $listener"
echo "file $found"
cat "$found.promguard-new.pub"
