#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and no Java: one DeepSeek-V3 decode step (the whole layer, and
# the kernel-level attention) driven from C (native/bench/abi/bench_abi_step.c, public C ABI only)
# and from the Java API (dev.mla4j.bench.GpuStepBench, from the .gpu-java bundle's test classes,
# run by the bundle's own runtime), one after the other in this call, on the same GPU with the same
# libmla. Prints a joined table (Java us, C us, Java/C) for the per-call time of back-to-back calls
# and for the latency of one call + synchronize; c.csv, java.csv, joined.csv and the logs go to
# $OUT (or ./gpu-out/java-bench).
#
#   scripts/gpu-java-bench.sh [bench arguments...]     e.g. --batches 1,128 --iters 20 --reps 5
#
# The bench arguments go to both programs (see the header of bench_abi_step.c). libmla and
# mla-bench-abi: see below (default: the bundle's CUDA libmla, the C program compiled against it
# here). The bundle: .gpu-java/ or .gpu-java.tgz from scripts/make-gpu-java-bundle.sh.
# Exit status: 0; 77 when there is no usable CUDA device; 1 when a build or a benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out/java-bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ ! -x .gpu-java/jre/bin/java ] && [ -f .gpu-java.tgz ]; then
  tar -xzf .gpu-java.tgz
fi
if [ ! -x .gpu-java/jre/bin/java ] || [ ! -f .gpu-java/test-classes/dev/mla4j/bench/GpuStepBench.class ]; then
  echo "gpu-java-bench: .gpu-java/ (with the test classes) is missing; run scripts/make-gpu-java-bundle.sh where a JDK 25 is" >&2
  exit 1
fi

# Which libmla (the JVM and the C program load the same file) and which mla-bench-abi:
#   libmla: MLA_BENCH_LIB; else (unless MLA_BENCH_CMAKE=1) the CUDA build bundled in .gpu-java,
#     which is what the Java API's users load; else a CMake build (below).
#   mla-bench-abi: MLA_BENCH_ABI; else, with a libmla chosen above, compiled here by cc against it
#     (seconds); else CMake builds libmla and it (CUDA on, architectures MLA_BENCH_ARCHS, default
#     90a) into ${MLA_BENCH_BUILD:-build-gpu-bench} (minutes).
dir=${MLA_BENCH_BUILD:-build-gpu-bench}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
lib=${MLA_BENCH_LIB:-}
abi=${MLA_BENCH_ABI:-}
libdir=
if [ -z "$lib" ] && [ "${MLA_BENCH_CMAKE:-0}" != 1 ]; then
  lib=$(find .gpu-java/classes -name 'libmla-cuda-*.so' 2>/dev/null | head -1)
  if [ -z "$lib" ]; then  # older bundles: one libmla-<version>.so
    lib=$(find .gpu-java/classes -name 'libmla-[0-9]*.so' 2>/dev/null | head -1)
  fi
fi
if [ -z "$abi" ] && [ -n "$lib" ] && command -v cc >/dev/null 2>&1; then
  # the C program finds the chosen file under its soname through a link in $dir
  soname=$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
  soname=${soname:-libmla.so}
  ln -sf "$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")" "$dir/$soname"
  libdir=$dir
  if ! cc -O2 -std=c11 -Wall -Wextra -Inative/include native/bench/abi/bench_abi_step.c -o "$dir/mla-bench-abi" \
       -L"$dir" -l:"$soname" -lm > "$out/build.log" 2>&1; then
    cat "$out/build.log"
    echo "gpu-java-bench: compiling mla-bench-abi failed" >&2
    exit 1
  fi
  abi=$dir/mla-bench-abi
elif [ -z "$abi" ] || [ -z "$lib" ]; then
  gen=()
  [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  if ! { cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMLA_CUDA=ON -DMLA_BUILD_TESTS=ON \
           -DCMAKE_CUDA_ARCHITECTURES="${MLA_BENCH_ARCHS:-90a}" &&
         cmake --build "$dir" --target mla mla-bench-abi -j"$(nproc)"; } > "$out/build.log" 2>&1; then
    tail -30 "$out/build.log"
    echo "gpu-java-bench: the build failed (log: $out/build.log)" >&2
    exit 1
  fi
  lib=${lib:-$dir/native/libmla.so}
  abi=${abi:-$dir/native/bench/mla-bench-abi}
fi
for f in "$lib" "$abi"; do
  if [ ! -f "$f" ]; then
    echo "gpu-java-bench: $f is missing" >&2
    exit 1
  fi
done
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")
libdir=${libdir:-$(dirname "$lib")}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1 || true

echo "== C (public C ABI): $abi $*"
# The C program loads the same libmla file as the JVM (its build-tree RUNPATH may not exist here).
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ ldd "$abi" | grep libmla; } > "$out/c-ldd.txt" 2>&1 || true
"$abi" "$@" > "$out/c.csv" 2> "$out/c.log"
status=$?
cat "$out/c.log"
if [ $status -eq 77 ]; then
  echo "gpu-java-bench: no CUDA device; nothing measured" >&2
  exit 77
fi
[ $status -eq 0 ] || { echo "gpu-java-bench: the C benchmark failed ($status)" >&2; exit 1; }

echo "== Java API: dev.mla4j.bench.GpuStepBench $*"
cp=".gpu-java/test-classes:.gpu-java/classes"
for j in .gpu-java/lib/*.jar; do cp="$cp:$j"; done
.gpu-java/jre/bin/java -version > "$out/java-version.txt" 2>&1
.gpu-java/jre/bin/java --enable-native-access=ALL-UNNAMED -Dmla4j.library.path="$lib" -cp "$cp" \
  dev.mla4j.bench.GpuStepBench "$@" > "$out/java.csv" 2> "$out/java.log"
status=$?
cat "$out/java.log"
if [ $status -eq 77 ]; then
  echo "gpu-java-bench: the JVM found no CUDA device although the C benchmark did" >&2
  exit 1
fi
[ $status -eq 0 ] || { echo "gpu-java-bench: the Java benchmark failed ($status)" >&2; exit 1; }

# Join on (op, batch). Columns of both CSVs:
# impl,op,batch,cached,iters,reps,per_call_us,per_call_min_us,single_us,single_min_us,device
awk -F, -v OFS=, '
  FNR == 1 { next }
  FILENAME ~ /c\.csv$/ { c[$2 "," $3] = $0; next }
  {
    k = $2 "," $3
    if (!(k in c)) { print "gpu-java-bench: no C row for " k > "/dev/stderr"; next }
    split(c[k], r, ",")
    print $2, $3, $4, $7, r[7], $7 / r[7], $9, r[9], $9 / r[9], $11
  }' "$out/c.csv" "$out/java.csv" > "$out/joined.body"
{
  echo "op,batch,cached,java_per_call_us,c_per_call_us,per_call_ratio,java_single_us,c_single_us,single_ratio,device"
  cat "$out/joined.body"
} > "$out/joined.csv"
rm -f "$out/joined.body"

echo
echo "== Java API vs C ABI, $(tail -n +2 "$out/c.csv" | head -1 | cut -d, -f11); same libmla: $lib"
echo "   per call: N calls back to back on one stream, then one synchronize (median of reps);"
echo "   single: one call + synchronize (median). Times in microseconds."
awk -F, 'NR == 1 { printf "%-14s %5s %8s | %10s %10s %7s | %10s %10s %7s\n", "op", "B", "cached",
                     "Java", "C", "Java/C", "Java 1x", "C 1x", "Java/C"; next }
         { printf "%-14s %5d %8d | %10.1f %10.1f %7.3f | %10.1f %10.1f %7.3f\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' \
  "$out/joined.csv"
# Same seeds, same work: the outputs' checksums (printed by both programs) should agree.
sums() { sed -n 's/.*\(B=[0-9]* [a-z_]*\):.*sum \([-+.0-9e]*\)).*/\1 \2/p' "$1"; }
if [ "$(sums "$out/c.log")" = "$(sums "$out/java.log")" ]; then
  echo "outputs: the same checksums from C and Java ($(sums "$out/c.log" | wc -l) outputs)"
else
  echo "outputs: the checksums differ between C and Java:"
  diff <(sums "$out/c.log") <(sums "$out/java.log")
fi
rows=$(($(wc -l < "$out/joined.csv") - 1))
if [ "$rows" -lt 1 ]; then
  echo "gpu-java-bench: no joined rows" >&2
  exit 1
fi
