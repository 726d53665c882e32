# Shared by scripts/dev and scripts/test: install Debian packages and make
# sure a Rust toolchain is on PATH. Sourced, not run.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PKG...: installs the packages that are missing (apt-get update first).
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing ${missing[*]} (apt's output in $(apt_log))"
        quietly as_root apt-get update
        quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

apt_log() {
    echo "${TMPDIR:-/tmp}/appliance-apt.log"
}

# quietly CMD...: runs CMD with its output going to the apt log, which is
# printed only if CMD fails (dpkg's progress is half a CI log otherwise).
quietly() {
    if ! "$@" >>"$(apt_log)" 2>&1; then
        echo "!! failed: $*; its output:" >&2
        tail -n 50 "$(apt_log)" >&2
        return 1
    fi
}

# ensure_promtool: promtool (and prometheus, for the dashboard test) from
# Debian's prometheus package, unpacked under target/tools/ rather than
# installed, so that no Prometheus server is set up or started here.
ensure_promtool() {
    unpack_tool prometheus usr/bin/promtool
}

# ensure_nginx: Debian's nginx binary under target/tools/, for the test of
# the BBB recipe's nginx route (no nginx service set up or started).
ensure_nginx() {
    unpack_tool nginx usr/sbin/nginx
}

# unpack_tool PACKAGE PATH: Debian's PACKAGE unpacked into target/tools/
# unless target/tools/PATH is there already.
unpack_tool() {
    local dir=target/tools
    [ -x "$dir/$2" ] && return
    echo "==> unpacking $1 from Debian's package into $dir"
    mkdir -p "$dir"
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ] || quietly as_root apt-get update
    (cd "$dir" && quietly apt-get download "$1" && dpkg-deb -x "$1"_*.deb . && rm -f "$1"_*.deb)
}

# ensure_rust: cargo on PATH, with rustfmt and clippy. Debian's own rustc is
# too old for this workspace, so rustup is used when nothing else is there.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "==> installing Rust with rustup (https://rustup.rs)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
}
