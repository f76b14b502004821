#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 15), starting from the
# committed corpus: `scripts/fuzz.sh 600` for a longer hunt. scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${1:-15}

# Every decoder of untrusted bytes has a cargo-fuzz target in fuzz/ (a harness in
# src/fuzzing.rs). Each runs for a bounded time, starting from the committed corpus; a crash
# or a leak, an allocation over 512 MiB or an input running over 10 s fails the run, and the
# input is left in fuzz/artifacts/<target>/ (commit it to fuzz/regressions/<target>/ with the
# fix; tests/fuzz_corpus.rs replays both on stable). cargo-fuzz and the fuzz build live in a
# cache outside the clone, which later runs reuse.
tools=${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn-tools}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || true
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "== cargo fuzz (${fuzz_seconds} s per target)"
    [ -x "$tools/bin/cargo-fuzz" ] || cargo install --locked cargo-fuzz --root "$tools"
    export PATH="$tools/bin:$PATH"
    for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
        corpus=$(mktemp -d)
        log="$corpus.log"
        if ! cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$tools/fuzz-target" \
                "$target" "$corpus" "fuzz/corpus/$target" -- \
                -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 \
                -timeout=10 >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "scripts/fuzz.sh: fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
            exit 1
        fi
        runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -n 1)
        echo "   $target: ${runs#Done } without a failure"
        rm -rf "$corpus" "$log"
    done
else
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!! scripts/fuzz.sh: NO NIGHTLY TOOLCHAIN: the fuzz targets did NOT run (the corpus was    !!" >&2
    echo "!! only replayed on stable). Install one with: rustup toolchain install nightly          !!" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
fi
