#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, then every test (as root, with the real
# registry, containerd and kernel mounts). This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/strata-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo nextest run --workspace --locked --test-threads 2 --no-fail-fast
