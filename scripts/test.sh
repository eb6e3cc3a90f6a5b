#!/usr/bin/env bash
# Runs every weightd test: installs what is missing, builds, then ctest.
# Usage: scripts/test.sh [ctest args...]   e.g. scripts/test.sh -L unit
#        scripts/test.sh --quick [ctest args...]
#          the developer's inner loop: only the Release tree, and only its
#          unit and service tests unless ctest args choose others (20 s
#          here once built).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --quick ]]; then
  shift
  scripts/install_deps.sh build grpc test demo
  scripts/build.sh build/release -DWEIGHTD_BUILD_PYTHON=ON \
    -DWEIGHTD_TEST_COMPILE_OPTIONS=-O0
  (($# > 0)) || set -- -L 'unit|service'
  exec ctest --test-dir build/release --output-on-failure -j 2 --timeout 900 "$@"
fi

scripts/install_deps.sh

# The Release tree the tests (and the demo) run from, with the Python
# package's native part (python/, ctest label python). The test programs'
# own sources at -O0 (the libraries they test stay -O3): their 33 objects
# took 352 -> 156 s of compile, their rebuild 85 s; unit+service ctest
# 22.2 -> 23.9 s.
scripts/build.sh build/release -DWEIGHTD_BUILD_PYTHON=ON \
  -DWEIGHTD_TEST_COMPILE_OPTIONS=-O0

# sanitizer_trees: builds the ASan and TSan trees (below).
sanitizer_trees() {
  set -euo pipefail
  # The sanitizer trees keep line tables, not full debug information: a
  # report still names every function, file and line (tests/tsan.supp
  # matches names), and each file compiles ~20 % faster (weightd_service.cc
  # under TSan: 20.1 s with -g, 16.6 s with -gline-tables-only).
  # The test programs' own sources are compiled at -O0 there
  # (tests/CMakeLists.txt WEIGHTD_TEST_COMPILE_OPTIONS; the libraries they
  # test, and the fuzzer, stay at -O2): every access is still instrumented,
  # and GoogleTest's templates at -O2 were half of the compile. ASan's 32 test
  # objects: 330 -> 162 s of compile, their rebuild 178 -> 92 s on 2 cores;
  # its ctest 61 -> 86 s (the service tests' own loops run slower at -O0).
  # -O1 is no cheaper to compile (tensor_store_test.cc alone: 33 s at -O1).
  local sanitizer_build=(-DCMAKE_BUILD_TYPE=RelWithDebInfo
    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O2 -gline-tables-only -DNDEBUG"
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -gline-tables-only -DNDEBUG"
    -DWEIGHTD_TEST_COMPILE_OPTIONS=-O0)

  # The unit and service tests again under AddressSanitizer (with leak
  # checks) and UndefinedBehaviorSanitizer, built with clang, plus the
  # libFuzzer target (run for 60 s as a ctest test labelled fuzz). The same
  # clang build checks the lock annotations (-Wthread-safety -Werror; g++
  # ignores them), the tests' own too: one tree, not a second build of
  # everything.
  CXX=clang++ scripts/build.sh build/asan "${sanitizer_build[@]}" \
    -DWEIGHTD_BUILD_EXAMPLES=OFF -DWEIGHTD_BUILD_BENCHMARKS=OFF -DWEIGHTD_FUZZ=ON \
    -DWEIGHTD_BUILD_TOOLS=OFF \
    -DWEIGHTD_THREAD_SAFETY=ON \
    "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"

  # The unit and service tests under ThreadSanitizer, built with clang
  # against Abseil and gRPC from Debian's sources, instrumented too
  # (scripts/tsan_deps.sh; gRPC is compiled as part of this tree, about 8
  # minutes on 2 cores the first time).
  scripts/tsan_deps.sh build/tsan-deps
  CC=clang CXX=clang++ scripts/build.sh build/tsan "${sanitizer_build[@]}" \
    -DWEIGHTD_BUILD_EXAMPLES=OFF -DWEIGHTD_BUILD_BENCHMARKS=OFF \
    -DWEIGHTD_BUILD_TOOLS=OFF \
    "-DCMAKE_PREFIX_PATH=$PWD/build/tsan-deps" \
    "-DWEIGHTD_GRPC_SOURCE_DIR=$PWD/build/tsan-deps/grpc-src" \
    "-DCMAKE_C_FLAGS=-fsanitize=thread -fno-omit-frame-pointer" \
    "-DCMAKE_CXX_FLAGS=-fsanitize=thread -fno-omit-frame-pointer" \
    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread"
}
export -f sanitizer_trees

# The sanitizer trees build while the Release tree's tests run: those
# tests mostly wait (on daemons, workers, containers and pytest; 1.2 of the
# 2 cores on average), and the builds take only the CPU they leave. The
# builds run at the lowest priority, nice 19 in a session of their own whose
# autogroup is at nice 19 too (where the kernel groups sessions, nice alone
# would only rank the builds within CI's own group). Measured here: the
# release ctest passed in 453 s beside a from-scratch ASan build, which got
# 287 CPU-s done meanwhile (about 155 s of its 2-core build time saved).
# The tests' output is printed when they end.
release_log=build/release/ctest.log
setsid -w bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null || true
  exec nice -n 19 bash -c sanitizer_trees' &
builds=$!  # Its own session and process group (setsid).
echo "test: ctest in build/release, beside the sanitizer builds"
ctest --test-dir build/release --output-on-failure -j 2 --timeout 900 "$@" \
  >"$release_log" 2>&1 &
release_ctest=$!
trap 'kill -- -"$builds" 2>/dev/null; kill "$release_ctest" 2>/dev/null; true' EXIT
status=0
wait "$release_ctest" || status=1
echo "test: ctest in build/release (finished)"
cat "$release_log"
wait "$builds"  # A failed build stops here (set -e).
trap - EXIT
echo "test: ctest under ASan/UBSan in build/asan"
# Debian's gRPC and Abseil are not instrumented, and ASan's
# container-overflow check can misfire on containers that code fills.
ASAN_OPTIONS=detect_leaks=1:detect_container_overflow=0 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j 2 --timeout 900 "$@" \
  2>&1 | tee build/asan/ctest.log || status=1
echo "test: ctest under TSan in build/tsan"
# Named, not looked up on PATH: without a symbolizer a report has no
# function names, and tests/tsan.supp (which matches names) hides nothing.
TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:external_symbolizer_path=/usr/lib/llvm-14/bin/llvm-symbolizer:suppressions=$PWD/tests/tsan.supp" \
  ctest --test-dir build/tsan --output-on-failure -j 2 --timeout 900 "$@" \
  2>&1 | tee build/tsan/ctest.log || status=1

# What failed, again at the very end: CI keeps the start and the end of a
# long output, and a failed assertion sits in the middle of its test's.
if ((status != 0)); then
  logs=("$release_log" build/asan/ctest.log build/tsan/ctest.log)
  echo "test: FAILED; the lines of the logs above that say what failed:"
  grep -h -E '\*\*\*(Failed|Timeout|Exception)|^\[  FAILED  \] [^0-9]' \
    "${logs[@]}" 2>/dev/null | sort -u | head -n 60 || true
  grep -h -E -A 10 ': Failure$|^FAIL|^E  |SUMMARY: [A-Za-z]+Sanitizer' \
    "${logs[@]}" 2>/dev/null | head -n 300 || true
fi
exit $status
