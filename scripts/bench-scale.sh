#!/usr/bin/env bash
# Scale benchmark: the commands that read the checkpoint catalogue, at two repository sizes.
# Generates repositories of SMALL and LARGE small checkpoints (real backups of a small tree
# that changes before each one, made by examples/scale_repo.rs), then times `list`,
# `ls latest`, `history docs/notes.txt`, a no-op backup, mounting + `ls history/docs/notes.txt`
# and `ls checkpoints/` in the mount, and the mount's peak RSS, and prints both sizes with
# their ratio. Every command runs once first (to fill the local catalogue and the kept path
# history, as any earlier run would), then the median of three runs is taken. Not part of
# the test suite; the tests assert request counts only.
#
# Usage: scripts/bench-scale.sh [SMALL [LARGE]]   (default 100 10000)
# Env: WORK (default /dev/shm/cairn-bench-scale: a tmpfs keeps fsync out of the generation).
set -euo pipefail
SMALL=${1:-100}
LARGE=${2:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/dev/shm/cairn-bench-scale}
# The release build, as users run it.
CAIRN="$ROOT/target/release/cairn"
GENERATE="$ROOT/target/release/examples/scale_repo"
(cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example scale_repo)

# Median wall seconds of three runs of "$@" (output discarded), after one warm-up run.
median_time() {
    "$@" >/dev/null 2>&1
    local times=()
    for _ in 1 2 3; do
        local start end
        start=$(date +%s.%N)
        "$@" >/dev/null 2>&1
        end=$(date +%s.%N)
        times+=("$(echo "$end - $start" | bc)")
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n 2p
}

# Mounts, lists history/docs/notes.txt (timed from the start of the mount), lists
# checkpoints/ (timed), and prints "MOUNT_SECONDS LS_CHECKPOINTS_SECONDS PEAK_RSS_KIB".
mount_once() {
    local dir=$1 mnt=$1/mnt
    mkdir -p "$mnt"
    local start end listed pid
    start=$(date +%s.%N)
    "$CAIRN" --repo "$dir/repo" --cache-dir "$dir/cache" mount "$mnt" 2>/dev/null &
    pid=$!
    until [ -d "$mnt/checkpoints" ]; do sleep 0.005; done
    ls "$mnt/history/docs/notes.txt" >/dev/null
    end=$(date +%s.%N)
    local ls_start
    ls_start=$(date +%s.%N)
    ls "$mnt/checkpoints" >/dev/null
    listed=$(date +%s.%N)
    local hwm
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    fusermount3 -u "$mnt"
    wait "$pid" || true
    echo "$(echo "$end - $start" | bc) $(echo "$listed - $ls_start" | bc) $hwm"
}

# Prints "name value" rows for a repository of $1 checkpoints.
measure() {
    local count=$1 dir=$WORK/$1
    rm -rf "$dir"
    mkdir -p "$dir"
    local started
    started=$(date +%s)
    "$GENERATE" "$dir/repo" "$dir/cache" "$dir/source" "$count"
    echo "generate $(( $(date +%s) - started ))" >&2
    local c=("$CAIRN" --repo "$dir/repo" --cache-dir "$dir/cache")
    echo "list_s $(median_time "${c[@]}" list)"
    echo "ls_latest_s $(median_time "${c[@]}" ls latest)"
    echo "history_s $(median_time "${c[@]}" history docs/notes.txt)"
    echo "noop_backup_s $(median_time "${c[@]}" backup "$dir/source")"
    mount_once "$dir" >/dev/null # fills the kept histories of the mount's paths
    local runs=() m
    for _ in 1 2 3; do runs+=("$(mount_once "$dir")"); done
    m=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
    echo "mount_ls_history_s $(echo "$m" | cut -d' ' -f1)"
    echo "mount_ls_checkpoints_s $(printf '%s\n' "${runs[@]}" | cut -d' ' -f2 | sort -n | sed -n 2p)"
    echo "mount_peak_rss_mib $(printf '%s\n' "${runs[@]}" | cut -d' ' -f3 | sort -n | sed -n 2p | awk '{printf "%.1f", $1/1024}')"
}

small=$(measure "$SMALL")
large=$(measure "$LARGE")
printf '| %-24s | %12s | %12s | %7s |\n' "measure" "$SMALL ckpts" "$LARGE ckpts" "ratio"
printf '|%s|%s|%s|%s|\n' "--------------------------" "--------------" "--------------" "---------"
paste -d' ' <(echo "$small") <(echo "$large") | while read -r name a _ b; do
    printf '| %-24s | %12s | %12s | %7s |\n' "$name" "$a" "$b" "$(echo "scale=2; $b / $a" | bc)"
done
rm -rf "$WORK"
