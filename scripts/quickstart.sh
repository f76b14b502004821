#!/usr/bin/env bash
# Builds cairn in release mode, backs up a sample tree into a local repository (demo
# password), changes it, backs it up again, lists the checkpoints, browses the latest one and
# restores it, and shows that the restored tree matches the source.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "quickstart: cairn needs a Rust toolchain; install it from https://rustup.rs and re-run" >&2
    exit 1
fi
if ! command -v cc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential
fi

echo "== building cairn (release)"
cargo build --release --locked
cairn="$PWD/target/release/cairn"

work="${CAIRN_QUICKSTART_DIR:-$(mktemp -d -t cairn-quickstart.XXXXXX)}"
mkdir -p "$work"
sample="$work/sample"
repo="$work/repo"
rm -rf "$sample" "$repo" "$work/restored" "$work/cache"
export CAIRN_REPO="$repo" CAIRN_CACHE_DIR="$work/cache" CAIRN_PASSWORD="quickstart-demo-password"

echo "== a sample tree in $sample"
mkdir -p "$sample/photos" "$sample/notes"
cp -r src docs "$sample/"
head -c 5000000 /dev/urandom > "$sample/photos/holiday.raw"
cp "$sample/photos/holiday.raw" "$sample/photos/holiday-copy.raw"   # deduplicated
echo "buy milk" > "$sample/notes/todo.txt"
ln -s notes/todo.txt "$sample/todo-link"

echo "== cairn init --repo $repo"
"$cairn" init
echo "== cairn backup $sample"
"$cairn" backup --tag first "$sample"
echo "call the plumber" >> "$sample/notes/todo.txt"
echo "== cairn backup (again, after a change: only the change is stored)"
"$cairn" backup --tag second "$sample"
echo "== cairn list"
"$cairn" list
echo "== cairn ls latest:notes"
"$cairn" ls latest:notes
echo "== cairn cat latest:notes/todo.txt"
"$cairn" cat latest:notes/todo.txt
echo "== cairn restore latest --target $work/restored"
"$cairn" restore latest --target "$work/restored"
diff -r --no-dereference "$sample" "$work/restored"
echo "== the restored tree is identical to the source"
echo "== cairn check --read-data"
"$cairn" check --read-data
echo
echo "Try it yourself:"
echo "  export CAIRN_REPO=$repo CAIRN_CACHE_DIR=$work/cache CAIRN_PASSWORD=quickstart-demo-password"
echo "  $cairn list"
