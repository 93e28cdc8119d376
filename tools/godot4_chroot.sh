#!/usr/bin/env bash
# Godot 4 for lego_embed's tests and demo on a machine whose own Debian is too old for it: a
# minimal Debian sid chroot (debootstrap --variant=minbase) in an ignored folder, with Debian's
# `godot` 4.x, Xvfb and Mesa (llvmpipe for OpenGL, lavapipe for Vulkan). A game developer does
# not need any of this: a normal Godot 4 install runs the addon (docs/GODOT.md).
#
#   godot4_chroot.sh ensure            build or repair the chroot (idempotent); prints the engine
#                                      version. Exit 3 with the reason on stderr when it cannot
#                                      be built (no root, mirror unreachable, a broken sid day).
#   godot4_chroot.sh run [--bind DIR]... [--] CMD...
#                                      run CMD inside the chroot, in the current directory, with
#                                      /proc, /dev, the Python that lego_embed's venv is based on
#                                      (read-only) and this repository mounted at the same paths
#                                      (plus every --bind DIR, read-write). Exit status: CMD's.
#   godot4_chroot.sh version           the engine version (godot --version), or exit 3
#   godot4_chroot.sh remove            delete the chroot folder
#
# Safety. Deleting a folder that still holds bind mounts deletes what they point to (the repo,
# the Python installation). So every mount is made inside a private mount namespace
# (unshare --mount) that exists only while one `run` (or one `ensure` step) lasts: the mounts are
# never visible outside it and vanish with it, even when the process is killed. A trap also
# unmounts them when a step fails. `remove` refuses to delete while /proc/mounts lists anything
# under the folder, and deletes with --one-file-system.
#
# Environment: LEGO_GODOT4_ROOT (default <repo>/build/godot4-sid), LEGO_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), LEGO_GODOT4_PYTHON (the Python whose installation is mounted;
# default <repo>/.venv/bin/python).
set -euo pipefail
# debootstrap, chroot and unshare live in the sbin folders, which a login shell's PATH may lack
export PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${LEGO_GODOT4_ROOT:-$REPO/build/godot4-sid}"
MIRROR="${LEGO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${LEGO_GODOT4_PYTHON:-$REPO/.venv/bin/python}"
LOCK="$ROOT.lock"
STAMP="$ROOT/.lego-embed-ready"
# The engine and what renders under Xvfb; then the shared libraries the host Python's standard
# extension modules load (ssl, ctypes, sqlite3, bz2, lzma, curses, readline, uuid).
PACKAGES=(godot xvfb xauth libgl1-mesa-dri mesa-vulkan-drivers
    libssl3t64 libffi8 libsqlite3-0 libbz2-1.0 liblzma5 zlib1g libexpat1 libncursesw6
    libreadline8t64 libuuid1)
APT_OPTIONS=(-o Acquire::Check-Valid-Until=false -o Acquire::Retries=3)

die() { echo "godot4_chroot.sh: $*" >&2; exit 3; }

require_root() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount, chroot); run as root"
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
}

# Folders under ROOT that the host's mount table lists (must be none before deleting).
mounts_under_root() {
    awk -v root="$ROOT" '{ gsub(/\\040/, " ", $2); if ($2 == root || index($2, root "/") == 1) print $2 }' /proc/mounts
}

safe_remove_root() {
    [ -e "$ROOT" ] || return 0
    local held
    held="$(mounts_under_root)"
    if [ -n "$held" ]; then
        die "refusing to delete $ROOT: still mounted there: $held (unmount first: umount -R <path>)"
    fi
    rm -rf --one-file-system "$ROOT"
}

# The host paths the embedded Python needs, one a line: the base interpreter's installation (or,
# for a system Python under /usr, just its interpreter, standard library and libpython, and each
# link from the venv's python to that interpreter, such as /usr/bin/python3).
python_paths() {
    REPO="$REPO" "$PYTHON" - <<'PY'
import os, sys, sysconfig
mounted = [os.environ["REPO"] + "/"]
if not sys.prefix.startswith(mounted[0]) and sys.prefix != sys.base_prefix:
    print(sys.prefix)  # a virtual environment outside the repository
    mounted.append(sys.prefix + "/")
base = sys.base_prefix
if base not in ("/usr", "/usr/local", "/"):
    print(base)
else:
    interpreter = f"{base}/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    print(sysconfig.get_paths(vars={"base": base, "platbase": base})["stdlib"])
    print(interpreter)
    print(f"{sysconfig.get_config_var('LIBDIR')}/{sysconfig.get_config_var('INSTSONAME')}")
    chain = [sys.executable]  # a venv's python reaches the interpreter through links (python3)
    while os.path.islink(chain[-1]):
        target = os.readlink(chain[-1])
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), target)))
    for link in chain:
        if link != interpreter and not link.startswith(tuple(mounted)):
            print(link)
PY
}

# Body of the private mount namespace: mount, run "$@" inside the chroot, always unmount.
# Arguments: BIND_COUNT BIND... WORKDIR CMD... (a BIND "ro:PATH" is mounted read-only)
namespace_body() {
    local count="$1"; shift
    local binds=("${@:1:$count}"); shift "$count"
    local workdir="$1"; shift
    local mounted=()
    cleanup() {
        local i
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    }
    trap cleanup EXIT
    mount -t proc proc "$ROOT/proc" && mounted+=("$ROOT/proc")
    mount --bind /dev "$ROOT/dev" && mounted+=("$ROOT/dev")
    local bind path target
    for bind in "${binds[@]}"; do
        path="${bind#ro:}"
        target="$ROOT$path"
        if [ -d "$path" ]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")"; touch "$target"; fi
        mount --bind "$path" "$target"
        mounted+=("$target")
        if [ "$bind" != "$path" ]; then mount -o remount,bind,ro "$target"; fi
    done
    local status=0
    chroot "$ROOT" /usr/bin/env -C "$workdir" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@" || status=$?
    return "$status"
}

# Runs "$@" inside the chroot with the given binds, in a private mount namespace.
in_chroot() {  # in_chroot WORKDIR BIND... -- CMD...
    local workdir="$1"; shift
    local binds=()
    while [ "$1" != "--" ]; do binds+=("$1"); shift; done
    shift
    unshare --mount --propagation private -- bash -c "$(declare -f namespace_body); ROOT='$ROOT'; namespace_body \"\$@\"" \
        namespace_body "${#binds[@]}" "${binds[@]}" "$workdir" "$@"
}

installed_version() {
    [ -f "$STAMP" ] && [ -x "$ROOT/usr/bin/godot" ] || return 1
    in_chroot / -- godot --headless --version 2>/dev/null | tail -1
}

ensure() {
    require_root
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$LOCK"
    flock 9
    local wanted="${PACKAGES[*]}"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] && installed_version >/dev/null; then
        installed_version
        return 0
    fi
    if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
        command -v debootstrap >/dev/null || {
            apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
                { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq debootstrap >/dev/null 2>&1; } ||
                die "cannot install debootstrap with apt"
        }
        safe_remove_root
        echo "godot4_chroot.sh: debootstrap --variant=minbase sid $ROOT $MIRROR" >&2
        if ! debootstrap --variant=minbase sid "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1; then
            tail -5 "$ROOT.debootstrap.log" >&2
            safe_remove_root
            die "debootstrap of Debian sid from $MIRROR failed (log: $ROOT.debootstrap.log)"
        fi
    fi
    echo "godot4_chroot.sh: apt-get install ${PACKAGES[*]}" >&2
    if ! in_chroot / -- sh -c "apt-get ${APT_OPTIONS[*]} update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get ${APT_OPTIONS[*]} install -y -qq --no-install-recommends ${PACKAGES[*]}" \
            >"$ROOT.apt.log" 2>&1; then
        tail -5 "$ROOT.apt.log" >&2
        die "apt-get in the sid chroot failed (log: $ROOT.apt.log)"
    fi
    echo "$wanted" >"$STAMP"
    installed_version || die "godot does not start in the chroot"
}

run() {
    require_root
    local binds=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --bind) binds+=("$(realpath "$2")"); shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "run: no command"
    [ -f "$STAMP" ] || die "the chroot is not built; run: $0 ensure"
    exec 9>"$LOCK"
    flock -s 9  # `remove` and `ensure` wait until this run is over
    local path
    binds=("$REPO" "${binds[@]}")  # first: later binds may lie inside it
    while IFS= read -r path; do binds+=("ro:$path"); done < <(python_paths)
    in_chroot "$PWD" "${binds[@]}" -- "$@"
}

case "${1:-}" in
    ensure) ensure ;;
    run) shift; run "$@" ;;
    version) require_root; installed_version || die "the chroot is not built; run: $0 ensure" ;;
    remove) require_root; [ -e "$ROOT" ] || exit 0; exec 9>"$LOCK"; flock 9; safe_remove_root; rm -f "$ROOT.debootstrap.log" "$ROOT.apt.log" ;;
    *) sed -n '2,27p' "$0" >&2; exit 2 ;;
esac
