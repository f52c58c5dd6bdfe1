#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for innostream's tests, demo and benchmarks. Idempotent and
# non-interactive: a second run only checks and returns in a few seconds.
#
#   * host packages: MariaDB 10.11 server + mariadb-backup (test server and reference tool), sysbench, debootstrap,
#     zstd, python3-venv, strace (tests/test_durability.py checks the order of fsync and rename). Debian's own
#     mariadb service is never started or used (policy-rc.d during the install, disabled afterwards if systemd
#     runs): tests start private servers with tools/sandbox.py.
#   * Debian sid chroots with MySQL 9.x ($SID_MYSQL) and MariaDB 11.x ($SID_MARIADB); a half-made chroot is
#     detected (no completion stamp and the packages not installed) and rebuilt.
#   * $REPO/.venv with `pip install -e '.[test]'` (redone when pyproject.toml changes).
#
# Environment: INNOSTREAM_SID_MYSQL, INNOSTREAM_SID_MARIADB (chroot dirs), DEBIAN_MIRROR, SKIP_CHROOTS=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SID_MYSQL="${INNOSTREAM_SID_MYSQL:-/var/tmp/innostream/sid-mysql}"
SID_MARIADB="${INNOSTREAM_SID_MARIADB:-/var/tmp/innostream/sid-mariadb}"
MIRROR="${DEBIAN_MIRROR:-}"  # empty: debootstrap's default mirror
HOST_PACKAGES=(mariadb-server mariadb-backup mariadb-client sysbench debootstrap zstd python3-venv python3-pip git
               ca-certificates shellcheck strace)
export DEBIAN_FRONTEND=noninteractive

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
t0=$SECONDS

[ "$(id -u)" = 0 ] || die "run as root (apt-get, debootstrap, chroot and mount need it)"

# --- host packages --------------------------------------------------------------------------------------------
missing=()
for p in "${HOST_PACKAGES[@]}"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's format, not a shell variable
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing host packages: ${missing[*]}"
    # Keep package scripts from starting the system mariadb (we never use it). Restore whatever was there.
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then saved="$(mktemp)"; cp -p "$policy" "$saved"; fi
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
    restore_policy() { if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi; }
    trap restore_policy EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    restore_policy; trap - EXIT
else
    say "host packages already installed"
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now mariadb.service >/dev/null 2>&1 || true
fi

# --- sid chroots ----------------------------------------------------------------------------------------------
# Unmount everything under a chroot (deepest first). Must succeed before any rm -rf: ROOT/tmp is the host's /tmp.
unmount_all() {
    local root="$1" m
    awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount "$m" || umount -l "$m"
    done
    if awk -v r="$root/" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/mounts; then
        die "could not unmount everything under $root"
    fi
}

# chroot_ok ROOT BINARY PACKAGES...: complete = stamp present, or every package installed and BINARY runs.
chroot_ok() {
    local root="$1" binary="$2"; shift 2
    [ -x "$root$binary" ] || return 1
    [ -e "$root/.innostream-complete" ] && return 0
    local p
    for p in "$@"; do
        # shellcheck disable=SC2016  # ${Status} is dpkg-query's format, not a shell variable
        chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
    chroot "$root" "$binary" --version >/dev/null 2>&1 || return 1
    date -u +%FT%TZ >"$root/.innostream-complete"
}

make_chroot() {
    local root="$1" binary="$2" include="$3"
    local pkgs
    IFS=, read -r -a pkgs <<<"$include"
    if chroot_ok "$root" "$binary" "${pkgs[@]}"; then
        say "chroot $root complete: $(chroot "$root" "$binary" --version | head -1)"
        return
    fi
    if [ -e "$root" ]; then
        say "chroot $root is incomplete: removing it"
        unmount_all "$root"
        rm -rf --one-file-system "$root"
    fi
    mkdir -p "$(dirname "$root")"
    local log="$root.debootstrap.log" t=$SECONDS
    say "debootstrap sid into $root (--include=$include), log $log"
    if ! debootstrap --variant=minbase --include="$include" sid "$root" ${MIRROR:+"$MIRROR"} >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "debootstrap of $root failed"
    fi
    chroot_ok "$root" "$binary" "${pkgs[@]}" || die "chroot $root built but $binary does not run"
    say "chroot $root built in $((SECONDS - t))s: $(chroot "$root" "$binary" --version | head -1)"
}

if [ "${SKIP_CHROOTS:-0}" != 1 ]; then
    make_chroot "$SID_MYSQL" /usr/sbin/mysqld mysql-server-core,mysql-client-core
    make_chroot "$SID_MARIADB" /usr/sbin/mariadbd mariadb-server,mariadb-backup
fi

# --- python venv ----------------------------------------------------------------------------------------------
VENV="$REPO/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.innostream-deps"
want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! (cd / && "$VENV/bin/python" -c 'import innostream, innostream.formats, pytest') 2>/dev/null; then
    say "pip install -e '.[test]'"
    piplog="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install -e "${REPO}[test]" >"$piplog" 2>&1; then
        tail -n 30 "$piplog" >&2
        die "pip install failed (log $piplog)"
    fi
    echo "$want" >"$stamp"
else
    say "venv up to date"
fi

say "done in $((SECONDS - t0))s"
