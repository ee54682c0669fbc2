#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read untrusted input: the wire protocol, the
# configuration, the journal and /proc. A bounded run per target (FUZZ_SECONDS, default 30),
# starting from the committed corpus in fuzz/corpus/TARGET; new inputs go to a scratch
# directory (the committed corpus is not rewritten). Prints executions, coverage and corpus
# growth per target; fails on a crash (the input is kept in fuzz/artifacts/TARGET) or when a
# target did not run or gained no coverage.
#
# Stable toolchain: cargo-fuzz with RUSTC_BOOTSTRAP=1 and no sanitizer (-s none).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
targets=(protocol config journal proc)
cargo fuzz build -s none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "artifacts/$target"
    seeds=$(ls "corpus/$target" | wc -l)
    log="$scratch/$target.log"
    if ! cargo fuzz run -s none "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
        echo "fuzz $target: FAILED"
        tail -n 40 "$log"
        status=1
        continue
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    start_cov=$(grep -m1 -o 'INITED cov: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    end_cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*$' || echo 0)
    new=$(ls "$scratch/$target" | wc -l)
    echo "fuzz $target: $runs executions in ${seconds}s, coverage $start_cov -> $end_cov, corpus $seeds seeds + $new new inputs"
    if [ "${runs:-0}" -eq 0 ] || [ "${end_cov:-0}" -eq 0 ]; then
        echo "fuzz $target: did not run"
        status=1
    fi
done
exit $status
