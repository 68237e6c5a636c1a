#!/usr/bin/env bash
# Builds the static binary target/x86_64-unknown-linux-musl/release/stretcher
# (packaging/README.md "A static binary"). Needs root for apt-get only when a package
# is missing.
#
# Route 1: the rustup target x86_64-unknown-linux-musl is installed -> plain
#          `cargo build --release --target ...` with musl-gcc for the C parts.
# Route 2: otherwise, everything from Debian bookworm:
#   - rustc-web / cargo-web (/usr/bin/rustc, /usr/bin/cargo) and rust-web-src, the std
#     source of that exact compiler; RUSTC_BOOTSTRAP=1 unlocks `-Z build-std` on it, and
#     std is rebuilt for musl (the rustup toolchain cannot do this: its std source does
#     not match, and it is not installed as a component here);
#   - musl-tools: musl-gcc compiles ring's and zstd's C, musl's crt objects and libc.a;
#   - LLVM's libunwind.a from libunwind-16-dev, extracted with `apt-get download` and
#     `dpkg-deb -x` (never installed: it conflicts with libunwind-dev), plus a one-function
#     shim for the glibc-only __fprintf_chk it references (Debian builds it fortified).
#   The binary is a static PIE (rcrt1.o, `-static-pie`), like the rustup musl target
#   makes: ASLR for an agent that runs as root and parses downloaded archives, at the cost
#   of a few microseconds of self-relocation at start. musl-gcc's stock specs only know a
#   dynamic PIE, so a specs file with a static-pie case is written beside the extracted
#   libunwind.
#
# Idempotent. Caches: cargo's own (target/, the rebuilt std included) and the extracted
# libunwind + shim under target/musl-deps/ (a fresh machine simply rebuilds them).
# Environment: STRETCHER_STATIC_ROUTE=rustup|debian forces a route.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
target_dir=${CARGO_TARGET_DIR:-target}
out="$target_dir/$target/release/stretcher"
musl_lib=/usr/lib/x86_64-linux-musl

apt_install() {
  # Installs the packages that are missing; retries while another dpkg holds the lock.
  local missing=() p i
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { echo "build-static: need ${missing[*]} (no apt-get)" >&2; exit 1; }
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
    apt-get update -qq
  fi
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
      return 0
    fi
    echo "build-static: apt-get install ${missing[*]} failed (try $i; dpkg lock?), retrying" >&2
    sleep 6
  done
  exit 1
}

# "SOURCE (= VERSION)" of an installed package, for the .deb's Built-Using field.
source_of() {
  dpkg-query -W -f='${source:Package} (= ${source:Version})' "$1"
}

route=${STRETCHER_STATIC_ROUTE:-}
if [ -z "$route" ]; then
  if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    route=rustup
  else
    route=debian
  fi
fi

apt_install musl-tools
export CC_x86_64_unknown_linux_musl=musl-gcc
start=$(date +%s)

case "$route" in
rustup)
  echo "build-static: rustup target $target installed; building with it" >&2
  cargo build --locked --release --target "$target"
  built_using=""
  ;;
debian)
  echo "build-static: no rustup $target; building with Debian's rustc-web and -Z build-std" >&2
  apt_install rustc-web cargo-web rust-web-src
  src=$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library
  [ -f "$src/Cargo.lock" ] || { echo "build-static: std source missing at $src (rust-web-src)" >&2; exit 1; }

  deps="$target_dir/musl-deps"
  mkdir -p "$deps"
  deps=$(cd "$deps" && pwd)
  if [ ! -f "$deps/lib/libunwind.a" ] || [ ! -f "$deps/lib/libunwind.built-using" ]; then
    # Extract libunwind.a from libunwind-16-dev without installing the package.
    rm -rf "$deps/pkg" "$deps/lib"
    mkdir -p "$deps/pkg" "$deps/lib"
    (cd "$deps/pkg" && for i in 1 2 3; do apt-get download -qq -o APT::Sandbox::User=root libunwind-16-dev && break; sleep 5; done)
    dpkg-deb -x "$deps"/pkg/libunwind-16-dev_*.deb "$deps/pkg/root"
    a=$(find "$deps/pkg/root" -name libunwind.a | head -n 1)
    [ -n "$a" ] || { echo "build-static: no libunwind.a in libunwind-16-dev" >&2; exit 1; }
    dpkg-deb -f "$deps"/pkg/libunwind-16-dev_*.deb Source Version |
      sed -e 's/^Source: \([^ ]*\).*/\1/' -e 's/^Version: //' | paste -sd ' ' |
      sed 's/^\([^ ]*\) \(.*\)$/\1 (= \2)/' >"$deps/lib/libunwind.built-using"
    cp "$a" "$deps/lib/libunwind.a.tmp"
    mv "$deps/lib/libunwind.a.tmp" "$deps/lib/libunwind.a"
    rm -rf "$deps/pkg"
  fi
  # __fprintf_chk: the one glibc-only (fortify) symbol libunwind.a references.
  cat >"$deps/fprintf_chk.c" <<'C'
#include <stdarg.h>
#include <stdio.h>
int __fprintf_chk(FILE *f, int flag, const char *fmt, ...) {
  (void)flag;
  va_list ap;
  va_start(ap, fmt);
  int r = vfprintf(f, fmt, ap);
  va_end(ap);
  return r;
}
C
  musl-gcc -O2 -fPIC -c "$deps/fprintf_chk.c" -o "$deps/fprintf_chk.o"
  # musl-gcc's specs with a static-pie case (rcrt1.o, no interpreter), and libgcc
  # without libgcc_eh.a (it needs glibc's _dl_find_object; libunwind.a unwinds instead).
  cat >"$deps/musl-static-pie.specs" <<SPECS
%rename cpp_options old_cpp_options

*cpp_options:
-nostdinc -isystem /usr/include/x86_64-linux-musl -isystem include%s %(old_cpp_options)

*cc1:
%(cc1_cpu) -nostdinc -isystem /usr/include/x86_64-linux-musl -isystem include%s

*link_libgcc:
-L$musl_lib -L .%s

*libgcc:
libgcc.a%s

*startfile:
%{!shared:%{static-pie:$musl_lib/rcrt1.o;:$musl_lib/Scrt1.o}} $musl_lib/crti.o crtbeginS.o%s

*endfile:
crtendS.o%s $musl_lib/crtn.o

*link:
%{!static-pie:-dynamic-linker /lib/ld-musl-x86_64.so.1} -nostdlib %{shared:-shared} %{static:-static} %{static-pie:-static -pie --no-dynamic-linker -z text} %{rdynamic:-export-dynamic}

SPECS
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=x86_64-linux-gnu-gcc
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C link-self-contained=no -C target-feature=+crt-static -C relocation-model=pic -C link-arg=-specs=$deps/musl-static-pie.specs -L native=$deps/lib -L native=$musl_lib -C link-arg=$deps/fprintf_chk.o"
  /usr/bin/cargo build --locked --release --target "$target" -Z build-std=std,panic_unwind
  built_using="$(cat "$deps/lib/libunwind.built-using"), $(source_of rust-web-src)"
  ;;
*)
  echo "build-static: unknown STRETCHER_STATIC_ROUTE=$route" >&2
  exit 2
  ;;
esac

linkage=$(ldd "$out" 2>&1 || true)
case "$linkage" in
  *"not a dynamic executable"* | *"statically linked"*) ;;
  *) echo "build-static: $out is not static: $linkage" >&2; exit 1 ;;
esac
if readelf -l "$out" | grep -q INTERP; then
  echo "build-static: $out has a program interpreter" >&2
  exit 1
fi
# What the package must name in Built-Using (statically linked Debian sources).
echo "$(source_of musl-dev)${built_using:+, $built_using}" >"$out.built-using"
echo "build-static: $out ($route route): $(stat -c %s "$out") bytes, $(($(date +%s) - start)) s; ldd: $linkage" >&2
