#!/usr/bin/env bash
# Builds llama.cpp's command-line tools (llama-quantize, llama-imatrix, llama-perplexity, llama-completion)
# from the llama.cpp sources vendored in the llama-cpp-python sdist on PyPI: CPU only, static, only those
# targets. The build is cached under $QUANTEASE_CACHE (default .cache/) in llama.cpp/<version>/, so a
# second call only checks that the binaries are there. The last line printed is the folder holding them.
#   bash scripts/build_llama_cpp.sh            # build (or find) the tools, print their folder
# PYTHON (default .venv/bin/python, else python3) runs pip; JOBS (default nproc) the parallel compiles.
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned release and the sha256 of its sdist (llama.cpp's sources come inside it).
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TOOLS=(llama-quantize llama-imatrix llama-perplexity llama-completion)

CACHE=${QUANTEASE_CACHE:-.cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The build optimises for this CPU (ggml's native default): the cache key carries the CPU's flags.
cpu_key=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-8)
root="$CACHE/llama.cpp/$VERSION-$cpu_key"
bin="$root/bin"

have_all() {
  for tool in "${TOOLS[@]}"; do [ -x "$bin/$tool" ] || return 1; done
}
if have_all; then echo "$bin"; exit 0; fi

# One build at a time per cache folder (a test session and a bench may ask together).
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if have_all; then echo "$bin"; exit 0; fi

sdist="$root/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ] || ! echo "$SHA256  $sdist" | sha256sum -c --status; then
  echo "downloading the llama-cpp-python $VERSION sdist" >&2
  rm -f "$sdist"
  "$PYTHON" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$root" >&2
  echo "$SHA256  $sdist" | sha256sum -c --status || { echo "sha256 mismatch for $sdist" >&2; exit 1; }
fi

src="$root/src"
rm -rf "$src" "$root/build"
mkdir -p "$src"
tar -xzf "$sdist" -C "$src" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"

# Standalone llama.cpp with its tools, nothing else: no tests, examples, server or network code.
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
echo "configuring llama.cpp (llama-cpp-python $VERSION)" >&2
cmake -S "$src" -B "$root/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF -DGGML_NATIVE=ON >"$root/configure.log" 2>&1 \
  || { tail -n 40 "$root/configure.log" >&2; exit 1; }
echo "building ${TOOLS[*]}" >&2
start=$SECONDS
cmake --build "$root/build" --target "${TOOLS[@]}" -j "${JOBS:-$(nproc)}" >"$root/build.log" 2>&1 \
  || { tail -n 40 "$root/build.log" >&2; exit 1; }

mkdir -p "$bin.tmp"
for tool in "${TOOLS[@]}"; do cp "$root/build/bin/$tool" "$bin.tmp/"; done
rm -rf "$bin" && mv "$bin.tmp" "$bin"
# The sources and objects are not needed once the static binaries exist.
rm -rf "$src" "$root/build"
echo "built llama.cpp's tools in $((SECONDS - start)) s" >&2
echo "$bin"
