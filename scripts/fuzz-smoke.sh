#!/usr/bin/env bash
# A short live run of every cargo-fuzz target (CI calls it; docs/security.md has longer runs).
# Stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the flags cargo-fuzz passes, `-s none` skips the
# nightly-only sanitizer. New inputs go to a scratch directory, never into the committed corpus.
#   FUZZ_SECONDS=20 scripts/fuzz-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
for target in token manifest authz request_body; do
    mkdir -p "${scratch}/${target}"
    echo "fuzz: ${target} for ${SECONDS_PER_TARGET}s"
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run "${target}" -s none "${scratch}/${target}" "corpus/${target}" -- \
        -max_total_time="${SECONDS_PER_TARGET}" -print_final_stats=1 >"${scratch}/${target}.log" 2>&1 || status=$?
    grep -E "^(stat::number_of_executed_units|stat::new_units_added)" "${scratch}/${target}.log" || true
    if [[ "${status}" != 0 ]]; then
        tail -n 40 "${scratch}/${target}.log"
        echo "fuzz: ${target} FAILED (exit ${status}); crash input under fuzz/artifacts/${target}/"
        exit 1
    fi
done
echo "fuzz: all targets ran ${SECONDS_PER_TARGET}s without a crash"
