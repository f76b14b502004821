#!/usr/bin/env bash
# The one entry point for the test suite, locally and in CI: installs what the tests need,
# then checks formatting, lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        echo "scripts/test.sh: please install: $*" >&2
        exit 1
    fi
}

# setpriv (util-linux) runs one test as an unprivileged user when the suite runs as root;
# fuse3 gives fusermount3, which the mount tests need; rsync is what the differential test
# compares `cairn sync` with; curl signs the S3 requests the S3 tests make to inspect a bucket.
command -v setpriv >/dev/null || apt_install util-linux
command -v fusermount3 >/dev/null || apt_install fuse3
command -v rsync >/dev/null || apt_install rsync
command -v curl >/dev/null || apt_install curl
# cron's crontab is what `cairn schedule --with cron` edits where systemd is not running.
command -v crontab >/dev/null || apt_install cron
command -v cargo >/dev/null || { echo "scripts/test.sh: needs a Rust toolchain (rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
# The S3 tests run against a real Garage (one node, and a three-node cluster): built once into
# the tools cache, and a failure here fails the suite rather than skipping those tests.
garage_env="$(bash scripts/garage.sh)"
export "$garage_env"

# A clean clone gains nothing from incremental compilation, and its files double the build's
# size on disk.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo clippy --lib --no-default-features (the library without mount, serve, client, S3, CLI)"
cargo clippy --lib --locked --no-default-features -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
cargo test --locked --doc

# Fuzzing: every decoder of untrusted bytes, each target for a bounded time (see fuzz.sh).
bash scripts/fuzz.sh "${CAIRN_FUZZ_SECONDS:-15}"
