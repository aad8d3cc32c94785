#!/usr/bin/env bash
# Build a container image from files on this machine, without a registry: each given
# program is copied with the shared libraries `ldd` lists for it into a fresh root
# filesystem, which `docker import` turns into an image.
#
#   scripts/rootfs-image.sh [options] TAG SRC[:DEST] ...
#
# SRC is a file on this machine; DEST its path in the image (default: the same path).
# Programs (ELF files with dynamic dependencies) bring their libraries along. Options:
#   --dir SRC:DEST      copy a whole directory tree (e.g. a Python standard library)
#   --user UID:GID      the image's user (an /etc/passwd entry `app` is written for it)
#   --home DIR          the user's home, created and owned by the user, mode 0700
#   --caps CAPS         file capabilities for the first program, as setcap writes them
#                       (e.g. cap_sys_ptrace,cap_dac_read_search,cap_sys_nice+p)
#   --entrypoint PATH   the image's entrypoint
#   --cmd JSON          the image's default command, as a JSON array
#   --env K=V           an environment variable (repeatable)
set -euo pipefail

user="" home="" caps="" entrypoint="" cmd="" envs=() dirs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --user) user="$2"; shift 2 ;;
    --home) home="$2"; shift 2 ;;
    --caps) caps="$2"; shift 2 ;;
    --entrypoint) entrypoint="$2"; shift 2 ;;
    --cmd) cmd="$2"; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --dir) dirs+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) echo "rootfs-image: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { echo "usage: $0 [options] TAG SRC[:DEST] ..." >&2; exit 2; }
command -v docker >/dev/null || { echo "rootfs-image: docker is not installed" >&2; exit 1; }
tag="$1"; shift

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{etc,tmp,proc,sys,dev}
chmod 1777 "$root/tmp"

copy_libs() {
  # `ldd` prints "name => /path (addr)" and the loader as "/lib64/ld-linux... (addr)"; it
  # fails for files that are not dynamic programs (debug files, data), which bring nothing.
  local libs
  libs="$(ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}')" || return 0
  for lib in $libs; do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

first=""
for spec in "$@"; do
  src="${spec%%:*}"
  dest="${spec#*:}"
  [ "$dest" = "$spec" ] && dest="$src"
  [ -e "$src" ] || { echo "rootfs-image: no such file: $src" >&2; exit 1; }
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
  copy_libs "$src"
  [ -z "$first" ] && first="$dest"
done
for spec in "${dirs[@]}"; do
  src="${spec%%:*}"
  dest="${spec#*:}"
  mkdir -p "$root$(dirname "$dest")"
  cp -a "$src" "$root$dest"
done

uid=0 gid=0
if [ -n "$user" ]; then
  uid="${user%%:*}"; gid="${user#*:}"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
if [ "$uid" != 0 ]; then
  printf 'app:x:%s:%s:app:%s:/sbin/nologin\n' "$uid" "$gid" "${home:-/}" >> "$root/etc/passwd"
  printf 'app:x:%s:\n' "$gid" >> "$root/etc/group"
fi
if [ -n "$home" ]; then
  mkdir -p "$root$home"
  chown "$uid:$gid" "$root$home"
  chmod 0700 "$root$home"
fi
if [ -n "$caps" ]; then
  command -v setcap >/dev/null || { echo "rootfs-image: --caps needs setcap (libcap2-bin)" >&2; exit 1; }
  setcap "$caps" "$root$first"
fi

changes=()
[ -n "$user" ] && changes+=(--change "USER $user")
[ -n "$entrypoint" ] && changes+=(--change "ENTRYPOINT [\"$entrypoint\"]")
[ -n "$cmd" ] && changes+=(--change "CMD $cmd")
[ -n "$home" ] && changes+=(--change "ENV HOME=$home")
for e in "${envs[@]}"; do changes+=(--change "ENV $e"); done


tar --xattrs --xattrs-include='security.capability' --numeric-owner -C "$root" -c . \
  | docker import "${changes[@]}" - "$tag" >/dev/null
echo "$tag"
