#!/usr/bin/env bash
# Provides the Garage the S3 tests run against: the pinned version, built once with
# `cargo install --locked` into the tools cache (${CAIRN_TOOLS_DIR:-~/.cache/cairn-tools}) and
# reused by every later run. Prints `CAIRN_GARAGE=<path of the binary>` on stdout, the variable
# the tests read; the build's own output goes to stderr. Fails (non-zero) when it cannot
# provide Garage: a skipped S3 suite is a red CI.
set -euo pipefail

version=2.5.0
tools="${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn-tools}"
garage="$tools/bin/garage"

installed_version() {
    "$garage" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n 1
}

if [ ! -x "$garage" ] || [ "$(installed_version)" != "$version" ]; then
    command -v cargo >/dev/null || { echo "scripts/garage.sh: needs cargo to build Garage $version" >&2; exit 1; }
    echo "scripts/garage.sh: building Garage $version into $tools (once; about 20-25 minutes on two cores)" >&2
    cargo install --locked garage --version "$version" --root "$tools" >&2
fi
if [ "$(installed_version)" != "$version" ]; then
    echo "scripts/garage.sh: $garage is not Garage $version (it says: $("$garage" --version 2>&1 | head -n 1))" >&2
    exit 1
fi
echo "CAIRN_GARAGE=$garage"
