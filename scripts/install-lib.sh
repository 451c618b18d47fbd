#!/usr/bin/env bash
# Installs the C library under PREFIX, as a C library installs:
#   include/engine.h
#   lib/libengine.so.1.<ABI>, with links libengine.so.1 (its SONAME) and libengine.so
#   lib/libengine.a                             debug info stripped
#   lib/pkgconfig/engine.pc                     pkg-config engine [--static]
#   lib/cmake/engine/engineConfig*.cmake        find_package(engine): engine::engine,
#                                               engine::engine_static
# from the templates in packaging/. Programs link with -L$PREFIX/lib -lengine and
# find the library at run time through -Wl,-rpath,$PREFIX/lib or ldconfig (run
# here when root and PREFIX/lib is in the loader's configuration, /usr/local/lib
# on Debian). Every file refers to PREFIX relatively, so the tree can move.
#
# The shared library is linked here from the static one, with a version script
# naming the functions include/engine.h declares (so it exports the C ABI alone)
# and the SONAME. The SONAME's 1 is the ABI's generation: the ABI only grows,
# and a program built against ABI version V runs with any later library
# (engine_abi_version() >= V), so the SONAME must not change with each addition;
# ENGINE_ABI_VERSION, which counts the additions, is the file's minor number.
#
# usage: scripts/install-lib.sh PREFIX [CARGO_BUILD_ARGS...]
#   e.g. scripts/install-lib.sh /usr/local
#        scripts/install-lib.sh /opt/engine --features cuda
# Builds with `cargo build --release --lib` first (into CARGO_TARGET_DIR or the
# configured target directory; cargo says where), unless LIB_DIR names a
# directory that already holds libengine.a (the tests use this).
set -euo pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: $0 PREFIX [CARGO_BUILD_ARGS...]" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
prefix=$(cd "$1" && pwd)
shift

if [ -n "${LIB_DIR:-}" ]; then
    archive=$LIB_DIR/libengine.a
else
    # The path of the staticlib cargo built, from its own report of the build.
    staticlib='
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine":
        print(*[f for f in m["filenames"] if f.endswith("/libengine.a")])'
    archive=$(cd "$root" &&
        cargo build --release --lib --message-format=json-render-diagnostics "$@" |
        python3 -c "$staticlib")
fi
if [ ! -f "$archive" ]; then
    echo "$0: no libengine.a${archive:+ at $archive}" >&2
    exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
abi=$(sed -n 's/^pub const ENGINE_ABI_VERSION: u32 = \([0-9]*\);$/\1/p' "$root/src/ffi/mod.rs")
if [ -z "$version" ] || [ -z "$abi" ]; then
    echo "$0: cannot read the version from Cargo.toml or ENGINE_ABI_VERSION from src/ffi/mod.rs" >&2
    exit 1
fi
soname=libengine.so.1
shared=$soname.$abi

# What the static library needs from the system: Rust's std's list for this
# toolchain (rustc --print native-static-libs), less libc and libgcc_s, which the
# compiler driver adds (libgcc_s for a dynamic program, libgcc_eh for -static);
# plus libstdc++ when the archive holds C++ (the CUDA kernels and cudart).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
system_libs=$(cd "$root" && rustc --crate-type staticlib --crate-name empty \
    --print native-static-libs -o "$work/libempty.a" - </dev/null 2>&1 |
    sed -n 's/^note: native-static-libs: //p' | tr ' ' '\n' |
    { grep -vxE -- '-lc|-lgcc_s|' || true; } | awk '!seen[$0]++' | tr '\n' ' ')
if nm -u "$archive" 2>/dev/null | grep -qE ' (__gxx_personality_v0|_Znwm|_ZdlPv)$'; then
    system_libs="$system_libs-lstdc++ "
fi
system_libs=${system_libs% }
if [ -z "$system_libs" ]; then
    echo "$0: rustc did not report the system libraries of a static library" >&2
    exit 1
fi

install -d "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/engine"
{
    echo "{ global:"
    grep -oE '\bengine_[a-z_]+\(' "$root/include/engine.h" | tr -d '(' | sort -u | sed 's/$/;/'
    echo "local: *; };"
} >"$work/exports.map"
install -m 644 "$root/include/engine.h" "$prefix/include/engine.h"
# Installed without debug info (Rust's std ships with line tables) and without
# the LLVM bitcode rustc embeds for its own LTO, which no C toolchain reads; what
# stays is code, data, symbols and relocations (the README says how much).
objcopy --strip-debug --remove-section=.llvmbc --remove-section=.llvmcmd \
    "$archive" "$work/libengine.a"
install -m 644 "$work/libengine.a" "$prefix/lib/libengine.a"
# shellcheck disable=SC2086 # system_libs is a list of flags
cc -shared -o "$prefix/lib/$shared" -Wl,-soname,$soname \
    -Wl,--version-script="$work/exports.map" -Wl,--gc-sections -Wl,-z,relro,-z,now \
    -Wl,--whole-archive "$work/libengine.a" -Wl,--no-whole-archive $system_libs
ln -sf "$shared" "$prefix/lib/$soname"
ln -sf "$soname" "$prefix/lib/libengine.so"

# packaging/*.in with their @NAME@ placeholders filled in.
fill() {
    sed -e "s|@VERSION@|$version|g" -e "s|@ABI@|$abi|g" -e "s|@SONAME@|$soname|g" \
        -e "s|@SHARED@|$shared|g" -e "s|@SYSTEM_LIBS@|$2|g" "$root/packaging/$1.in"
}
fill engine.pc "$system_libs" >"$prefix/lib/pkgconfig/engine.pc"
cmake_libs=$(echo "$system_libs" | sed 's/-l//g; s/ /;/g')
fill engineConfig.cmake "$cmake_libs" >"$prefix/lib/cmake/engine/engineConfig.cmake"
fill engineConfigVersion.cmake "" >"$prefix/lib/cmake/engine/engineConfigVersion.cmake"
echo "installed engine $version (ABI $abi) under $prefix"

# The loader finds libengine.so.1 through a program's rpath, or through its cache
# when PREFIX/lib is one of its directories: refresh the cache then.
if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null 2>&1 &&
    ldconfig -v -N -X 2>/dev/null | grep '^/' | cut -d: -f1 | grep -qxF "$prefix/lib"; then
    ldconfig
    echo "ldconfig: $prefix/lib registered"
else
    echo "link programs with -Wl,-rpath,$prefix/lib, or add $prefix/lib to /etc/ld.so.conf.d/ and run ldconfig"
fi
