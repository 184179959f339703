#!/usr/bin/env bash
# System packages some tests use: `chromium` (headless check of dump_dir/index.html) and
# `graphviz` (`dot -Tsvg` draws the final graph in that page). Installs the missing ones with
# apt-get when running as root or with passwordless sudo; otherwise it says what is missing.
# It never fails: the tests that need these programs skip without them.
set -u

# command -> Debian package
declare -A PACKAGE_OF=([chromium]=chromium [dot]=graphviz)

missing_packages() {
    local cmd
    for cmd in "${!PACKAGE_OF[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || echo "${PACKAGE_OF[$cmd]}"
    done | sort
}

privilege_prefix() {
    if [ "$(id -u)" -eq 0 ]; then
        echo ""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "sudo -n"
    else
        return 1
    fi
}

has_install_candidate() {
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

apt_install() {
    # shellcheck disable=SC2086  # $SUDO is empty or "sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

apt_update() {
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
}

install_packages() {
    local pkg need_update=0
    for pkg in "$@"; do
        has_install_candidate "$pkg" || need_update=1
    done
    [ "$need_update" -eq 1 ] && apt_update
    # A stale package list can name files the mirror no longer has: update once and retry.
    apt_install "$@" || { apt_update && apt_install "$@"; }
}

main() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        echo "system-deps: chromium and graphviz are present"
        return 0
    fi
    # shellcheck disable=SC2086
    set -- $missing
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "system-deps: missing $*; no apt-get here, install them by hand (tests skip without)"
        return 0
    fi
    if ! SUDO=$(privilege_prefix); then
        echo "system-deps: missing $*; run as root (or with passwordless sudo) to install:" \
             "apt-get install --no-install-recommends $* (tests skip without)"
        return 0
    fi
    echo "system-deps: installing $*"
    install_packages "$@" || echo "system-deps: installing $* failed; continuing (tests skip)"
    return 0
}

main
