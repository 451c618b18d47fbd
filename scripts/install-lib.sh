#!/usr/bin/env bash
# Installs the C library under PREFIX: include/engine.h, lib/libengine.so,
# lib/libengine.a and lib/pkgconfig/engine.pc, so that C programs build with
#   cc prog.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs engine)
#
# usage: scripts/install-lib.sh PREFIX
# Builds with `cargo build --release --lib` first, unless LIB_DIR names a
# directory that already holds libengine.so and libengine.a (the tests use this).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
prefix=$(cd "$1" && pwd)

if [ -z "${LIB_DIR:-}" ]; then
    (cd "$root" && cargo build --release --lib)
    LIB_DIR=$root/target/release
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)

install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 644 "$root/include/engine.h" "$prefix/include/engine.h"
install -m 755 "$LIB_DIR/libengine.so" "$prefix/lib/libengine.so"
install -m 644 "$LIB_DIR/libengine.a" "$prefix/lib/libengine.a"

# Libs.private: what the static library needs from the system (Rust's std on Linux).
cat > "$prefix/lib/pkgconfig/engine.pc" <<PC
prefix=$prefix
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: engine
Description: LLM inference engine (C ABI: engine.h)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lengine
Libs.private: -lpthread -ldl -lm
PC
echo "installed engine $version under $prefix"
