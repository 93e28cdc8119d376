#!/usr/bin/env bash
# Build lego_embed's GDExtension bridge for Godot 4 (build/liblego_bridge.so). Idempotent.
#   1. gdextension_interface.h dumped from the Godot 4 that will load the bridge
#      (`godot --headless --dump-gdextension-interface`), again whenever its version changes;
#      nothing from Godot is committed.
#   2. The C bridge (this folder's GDExtension glue and the C core it shares with the Godot 3
#      bridge, ../../../native/) compiled against the Python that will run inside Godot, linked
#      -z nodelete (Python threads and an exit handler may outlive Godot's unloading of it).
# Usage: build.sh [PYTHON [GODOT...]]
#   PYTHON: the interpreter (or venv python) the bridge embeds; default $LEGO_EMBED_PYTHON, else
#   python3. GODOT: the command that runs Godot 4; default $LEGO_GODOT4, else `godot`
#   (lego_embed's own tests use `tools/godot4_chroot.sh run godot`).
set -euo pipefail

NATIVE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CORE_DIR="$(cd "$NATIVE_DIR/../../../native" && pwd)"
CORE_SOURCES=("$CORE_DIR/engine_queues.c" "$CORE_DIR/json_text.c" "$CORE_DIR/python_embed.c")
BUILD_DIR="$NATIVE_DIR/build"
HEADERS_DIR="$BUILD_DIR/godot-headers"
LIB="$BUILD_DIR/liblego_bridge.so"
PYTHON="${1:-${LEGO_EMBED_PYTHON:-python3}}"
if [ $# -ge 2 ]; then
    GODOT=("${@:2}")
else
    read -r -a GODOT <<<"${LEGO_GODOT4:-godot}"
fi
if [[ "${GODOT[0]}" == */* ]]; then GODOT[0]="$(realpath "${GODOT[0]}")"; fi  # we cd below

mkdir -p "$HEADERS_DIR"
version="$("${GODOT[@]}" --headless --version 2>/dev/null | tail -1)" || true
case "$version" in
    4.*) ;;
    *) echo "build.sh: '${GODOT[*]} --version' gave '$version', not Godot 4; pass the Godot 4" \
            "command as the second argument or set LEGO_GODOT4" >&2; exit 1 ;;
esac
if [ ! -f "$HEADERS_DIR/gdextension_interface.h" ] || [ "$(cat "$HEADERS_DIR/version.txt" 2>/dev/null)" != "$version" ]; then
    (cd "$HEADERS_DIR" && rm -f gdextension_interface.h &&
        "${GODOT[@]}" --headless --dump-gdextension-interface >/dev/null 2>&1) || true
    [ -f "$HEADERS_DIR/gdextension_interface.h" ] ||
        { echo "build.sh: Godot $version did not dump gdextension_interface.h" >&2; exit 1; }
    echo "$version" >"$HEADERS_DIR/version.txt"
    echo "build.sh: gdextension_interface.h dumped from Godot $version"
fi

# shellcheck source=../../../native/python_build_flags.sh
. "$CORE_DIR/python_build_flags.sh"

stamp="$BUILD_DIR/flags.txt"
flags="$cflags $ldflags $soname $base_python $version"
newest_source="$(ls -t "$NATIVE_DIR/lego_bridge.c" "${CORE_SOURCES[@]}" "$CORE_DIR"/*.h | head -1)"
if [ -f "$LIB" ] && [ "$LIB" -nt "$newest_source" ] && [ -f "$stamp" ] && \
   [ "$(cat "$stamp")" = "$flags" ]; then
    echo "build.sh: $LIB is up to date (Godot $version)"
    exit 0
fi
# shellcheck disable=SC2086
cc -std=c11 -D_GNU_SOURCE -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
    -I"$HEADERS_DIR" -I"$CORE_DIR" $cflags \
    -DLEGO_LIBPYTHON_SONAME="\"$soname\"" -DLEGO_FALLBACK_PYTHON="\"$base_python\"" \
    "$NATIVE_DIR/lego_bridge.c" "${CORE_SOURCES[@]}" -o "$LIB" $ldflags -lpthread \
    -Wl,-rpath,"$libdir" -Wl,-z,nodelete
echo "$flags" > "$stamp"
echo "build.sh: built $LIB for Godot $version"
