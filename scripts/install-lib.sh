#!/usr/bin/env bash
# Installs the C library under PREFIX, as a C library installs:
#   include/engine.h
#   lib/libengine.so.1.<ABI>, with links libengine.so.1 (its SONAME) and libengine.so
#   lib/libengine.a
#   lib/pkgconfig/engine.pc                     pkg-config engine [--static]
#   lib/cmake/engine/engineConfig*.cmake        find_package(engine): engine::engine,
#                                               engine::engine_static
# Programs link with -L$PREFIX/lib -lengine and find the library at run time
# through -Wl,-rpath,$PREFIX/lib or ldconfig. Every file refers to PREFIX
# relatively, so the tree can move.
#
# The shared library is linked here from the static one with a version script
# naming the functions include/engine.h declares, so it exports the C ABI
# alone: cargo's cdylib also exports llguidance's llg_* functions (and, built
# with `cuda`, the kernels' launchers) and takes no version script of ours.
# The SONAME's 1 is the ABI's generation: the ABI only grows
# (ENGINE_ABI_VERSION, the file's minor number, counts the additions).
#
# usage: scripts/install-lib.sh PREFIX
# Builds with `cargo build --release --lib` first (in CARGO_TARGET_DIR or the
# configured target directory), unless LIB_DIR names a directory that already
# holds libengine.a (the tests use this).
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
    target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    LIB_DIR=$target/release
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
abi=$(sed -n 's/^pub const ENGINE_ABI_VERSION: u32 = \([0-9]*\);$/\1/p' "$root/src/ffi/mod.rs")
soname=libengine.so.1
shared=$soname.$abi
# What Rust's std needs from the system (rustc --print native-static-libs,
# less libc and libgcc_s, which the compiler driver adds: libgcc_s for a
# dynamic program, libgcc_eh for a -static one).
system_libs="-lutil -lrt -lpthread -lm -ldl"

install -d "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/engine"
exports=$(mktemp)
trap 'rm -f "$exports"' EXIT
{
    echo "{ global:"
    grep -oE '\bengine_[a-z_]+\(' "$root/include/engine.h" | tr -d '(' | sort -u | sed 's/$/;/'
    echo "local: *; };"
} >"$exports"
install -m 644 "$root/include/engine.h" "$prefix/include/engine.h"
install -m 644 "$LIB_DIR/libengine.a" "$prefix/lib/libengine.a"
# shellcheck disable=SC2086 # system_libs is a list of flags
cc -shared -o "$prefix/lib/$shared" -Wl,-soname,$soname \
    -Wl,--version-script="$exports" -Wl,--gc-sections \
    -Wl,--whole-archive "$LIB_DIR/libengine.a" -Wl,--no-whole-archive $system_libs
ln -sf "$shared" "$prefix/lib/$soname"
ln -sf "$soname" "$prefix/lib/libengine.so"

cat >"$prefix/lib/pkgconfig/engine.pc" <<PC
prefix=\${pcfiledir}/../..
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: engine
Description: LLM inference engine (C ABI: engine.h)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lengine
Libs.private: $system_libs
PC

cmake_libs=$(echo "$system_libs" | sed 's/-l//g; s/ /;/g')
cat >"$prefix/lib/cmake/engine/engineConfig.cmake" <<CMAKE
# find_package(engine): engine::engine (libengine.so) and engine::engine_static
# (libengine.a with the system libraries it needs), both with engine.h.
get_filename_component(_engine_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET engine::engine)
  add_library(engine::engine SHARED IMPORTED)
  set_target_properties(engine::engine PROPERTIES
    IMPORTED_LOCATION "\${_engine_prefix}/lib/$shared"
    IMPORTED_SONAME "$soname"
    INTERFACE_INCLUDE_DIRECTORIES "\${_engine_prefix}/include")
  add_library(engine::engine_static STATIC IMPORTED)
  set_target_properties(engine::engine_static PROPERTIES
    IMPORTED_LOCATION "\${_engine_prefix}/lib/libengine.a"
    INTERFACE_INCLUDE_DIRECTORIES "\${_engine_prefix}/include"
    INTERFACE_LINK_LIBRARIES "$cmake_libs")
endif()
unset(_engine_prefix)
CMAKE
cat >"$prefix/lib/cmake/engine/engineConfigVersion.cmake" <<CMAKE
# engine $version: any request for a version at or below it is met.
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
CMAKE
echo "installed engine $version (ABI $abi) under $prefix"
