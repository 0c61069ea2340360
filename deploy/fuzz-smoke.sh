#!/usr/bin/env bash
# Fuzz smoke test (issue 6): builds the cargo-fuzz targets in fuzz/ and runs
# each for FUZZ_SECONDS (default 20) from the seeds in tests/fixtures/.
# Exits non-zero when a target crashes (a panic or a broken property); the
# input is left in fuzz/artifacts/<target>/. .ci/run runs this after the tests.
#
# The machine has only stable Rust: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass
# its -Z flags, and --sanitizer none skips AddressSanitizer, whose runtime
# needs a nightly toolchain (the targets are safe Rust; what they look for
# is panics and broken properties, which need no sanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
started=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cd fuzz
cargo fuzz build --sanitizer none

fixtures=../tests/fixtures
declare -A seeds=(
    [parse_action]="$fixtures/messages/action/valid $fixtures/messages/action/invalid $fixtures/messages/action/divergent"
    [parse_batch]="$fixtures/messages/batch/valid $fixtures/messages/batch/invalid"
    [parse_sync]="$fixtures/messages/sync/valid $fixtures/messages/sync/invalid"
    [show_stat]="$fixtures/haproxy-2.6"
    [servers_state]="$fixtures/haproxy-2.6"
    [csv_line]="$fixtures/haproxy-2.6"
)
targets=(parse_action parse_batch parse_sync show_stat servers_state csv_line)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$work/corpus/$target"
    options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    case $target in parse_*) options+=(-dict=dict/json.dict) ;; esac
    # shellcheck disable=SC2086 # the seed folders are split on purpose
    if cargo fuzz run --sanitizer none "$target" "$work/corpus/$target" ${seeds[$target]} \
        -- "${options[@]}" >"$work/$target.log" 2>&1; then
        result=ok
    else
        result=CRASH
        failed+=("$target")
        tail -n 60 "$work/$target.log"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)
    corpus=$(find "$work/corpus/$target" -type f | wc -l)
    echo "fuzz-smoke: $target: $result, ${runs:-?} runs in ${seconds} s, corpus $corpus inputs"
done

echo "fuzz-smoke: $(( $(date +%s) - started )) s in all"
if ((${#failed[@]})); then
    echo "fuzz-smoke: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
