#!/usr/bin/env bash
# Builds cairn in release mode, backs up a sample tree into a local repository (demo
# password), changes it, backs it up again, lists the checkpoints, mounts them and shows the
# mount, restores the latest one, and shows that the restored tree matches the source.
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
sleep 1   # checkpoint names in the mount have one-second resolution
echo "call the plumber" >> "$sample/notes/todo.txt"
echo "== cairn backup (again, after a change: only the change is stored)"
"$cairn" backup --tag second "$sample"
echo "== cairn list"
"$cairn" list
echo "== cairn ls latest:notes"
"$cairn" ls latest:notes
echo "== cairn cat latest:notes/todo.txt"
"$cairn" cat latest:notes/todo.txt
if [ -e /dev/fuse ] && ! command -v fusermount3 >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3
fi
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
    mnt="$work/mnt"
    mkdir -p "$mnt"
    echo "== cairn mount $mnt"
    "$cairn" mount "$mnt" &
    mount_pid=$!
    for _ in $(seq 50); do [ -d "$mnt/checkpoints" ] && break; sleep 0.1; done
    echo "\$ ls $mnt/checkpoints"; ls "$mnt/checkpoints"
    echo "\$ ls -l $mnt/latest/notes"; ls -l "$mnt/latest/notes"
    echo "\$ ls $mnt/history/notes/todo.txt   (one file per version)"; ls "$mnt/history/notes/todo.txt"
    kill -TERM "$mount_pid"; wait "$mount_pid"
else
    echo "== (skipping cairn mount: no FUSE on this machine)"
fi
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
