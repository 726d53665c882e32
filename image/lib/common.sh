# Shared helpers for image/build and image/boot. Sourced, not executed.
#
# Progress and errors go to stderr: image/build's stdout is reserved for the
# image path on its last line, which tests capture.

log() { printf '[image] %s\n' "$*" >&2; }
warn() { printf '[image] WARNING: %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

# On any unexpected failure say where, so a CI log points at the line.
trap_err() { printf '[image] ERROR: command failed (exit %s) at %s:%s: %s\n' \
    "$1" "${BASH_SOURCE[1]:-?}" "$2" "$3" >&2; }
trap 'trap_err $? $LINENO "$BASH_COMMAND"' ERR

# The repository root, whatever the caller's working directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# abspath PATH: PATH made absolute against the caller's working directory
# (environment variables are given relative to where the user stands), and
# repository-relative defaults against the repository root.
abspath() { realpath -m -- "$1"; }

# ensure_host_tools CHECK=PACKAGE ...: install the Debian packages whose
# CHECK (a command name, or an absolute file path) is missing. CI starts on a
# clean machine, so every tool this image needs is installed here, once.
ensure_host_tools() {
    local missing=() pair check pkg
    for pair in "$@"; do
        check="${pair%%=*}" pkg="${pair#*=}"
        if [[ "$check" == /* ]]; then
            [[ -e "$check" ]] && continue
        else
            command -v "$check" >/dev/null 2>&1 && continue
        fi
        [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "missing host packages (${missing[*]}); run as root or install them with apt-get"
    command -v apt-get >/dev/null || die "missing host packages (${missing[*]}) and no apt-get to install them"
    log "installing host packages: ${missing[*]}"
    # -y also accepts removals: qemu-system-x86 from bookworm conflicts with a
    # newer backported qemu-utils, which apt then removes.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
    for pair in "$@"; do
        check="${pair%%=*}"
        if [[ "$check" == /* ]]; then [[ -e "$check" ]]; else command -v "$check" >/dev/null; fi \
            || die "installed ${pair#*=} but $check is still missing"
    done
}

# Elapsed seconds since START (from `date +%s.%N`), one decimal.
elapsed() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
