#!/usr/bin/env bash
# Build lego_embed's GDNative bridge (build/liblego_bridge.so). Idempotent; every step is skipped
# when its output is already there.
#   1. apt packages: godot3, xvfb, xauth, Mesa's software GL, a C toolchain (only when missing;
#      needs root or sudo).
#   2. GDNative headers from Debian's source package `godot` (a deb-src entry is added if needed).
#   3. gdnative_api_struct.gen.h generated from gdnative_api.json by gen_gdnative_api.py.
#   4. The C bridge (this folder's GDNative glue and the C core it shares with the Godot 4 bridge,
#      ../../../native/) compiled against the Python that will run inside Godot.
# Usage: build.sh [PYTHON]   PYTHON: the interpreter (or venv python) the bridge embeds;
#        default: $LEGO_EMBED_PYTHON, else python3. Its base interpreter's python3-config is used.
set -euo pipefail

NATIVE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CORE_DIR="$(cd "$NATIVE_DIR/../../../native" && pwd)"
CORE_SOURCES=("$CORE_DIR/engine_queues.c" "$CORE_DIR/json_text.c" "$CORE_DIR/python_embed.c")
BUILD_DIR="$NATIVE_DIR/build"
HEADERS_DIR="$BUILD_DIR/godot-headers"
LIB="$BUILD_DIR/liblego_bridge.so"
PYTHON="${1:-${LEGO_EMBED_PYTHON:-python3}}"
APT_PACKAGES=(godot3 xvfb xauth libgl1-mesa-dri build-essential pkg-config dpkg-dev)

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "build.sh: need root (or sudo) for: $*" >&2; return 1; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "build.sh: installing ${missing[*]}"
    as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$BUILD_DIR"
if [ ! -f "$HEADERS_DIR/gdnative_api.json" ]; then
    if ! apt-get source --print-uris godot 2>/dev/null | grep -q "orig.tar"; then
        src_list=/etc/apt/sources.list.d/lego-embed-godot-src.sources
        echo "build.sh: adding Debian source entry $src_list"
        codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$codename" | as_root tee "$src_list" >/dev/null
        as_root apt-get update -qq
    fi
    fetch_dir="$BUILD_DIR/godot-source"
    mkdir -p "$fetch_dir"
    (cd "$fetch_dir" && apt-get source --download-only godot >/dev/null 2>&1)
    orig="$(ls "$fetch_dir"/godot_*.orig.tar.*)"
    tar xf "$orig" -C "$fetch_dir" --wildcards '*/modules/gdnative/include' \
        '*/modules/gdnative/gdnative_api.json'
    top="$(basename "$(dirname "$(dirname "$(dirname "$(ls "$fetch_dir"/*/modules/gdnative/gdnative_api.json)")")")")"
    rm -rf "$HEADERS_DIR"
    cp -r "$fetch_dir/$top/modules/gdnative/include" "$HEADERS_DIR"
    cp "$fetch_dir/$top/modules/gdnative/gdnative_api.json" "$HEADERS_DIR/gdnative_api.json"
    rm -rf "$fetch_dir"
fi

GEN_HEADER="$HEADERS_DIR/gdnative_api_struct.gen.h"
if [ ! -f "$GEN_HEADER" ] || [ "$NATIVE_DIR/gen_gdnative_api.py" -nt "$GEN_HEADER" ]; then
    python3 "$NATIVE_DIR/gen_gdnative_api.py" "$HEADERS_DIR/gdnative_api.json" "$GEN_HEADER"
fi

# The Python the bridge embeds: a venv's python points at its base interpreter, whose
# python3-config gives the embedding flags and whose libpython we link.
# shellcheck source=../../../native/python_build_flags.sh
. "$CORE_DIR/python_build_flags.sh"

stamp="$BUILD_DIR/flags.txt"
flags="$cflags $ldflags $soname $base_python"
newest_source="$(ls -t "$NATIVE_DIR/lego_bridge.c" "${CORE_SOURCES[@]}" "$CORE_DIR"/*.h | head -1)"
if [ -f "$LIB" ] && [ "$LIB" -nt "$newest_source" ] && [ -f "$stamp" ] && \
   [ "$(cat "$stamp")" = "$flags" ]; then
    echo "build.sh: $LIB is up to date"
    exit 0
fi
# shellcheck disable=SC2086
cc -std=c11 -D_GNU_SOURCE -O2 -fPIC -shared -Wall -Wextra -Werror \
    -I"$HEADERS_DIR" -I"$CORE_DIR" $cflags \
    -DLEGO_LIBPYTHON_SONAME="\"$soname\"" -DLEGO_FALLBACK_PYTHON="\"$base_python\"" \
    "$NATIVE_DIR/lego_bridge.c" "${CORE_SOURCES[@]}" -o "$LIB" $ldflags -lpthread -Wl,-rpath,"$libdir"
echo "$flags" > "$stamp"
echo "build.sh: built $LIB"
