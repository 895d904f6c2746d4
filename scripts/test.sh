#!/usr/bin/env bash
# Runs the whole test suite (unit and integration tests against real stores written by skopeo
# and read back by containers-storage and podman). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The library's modules form no cycle (docs/architecture.md): fails listing any that does.
python3 scripts/module-deps.py crates/composefs-storage/src >/dev/null
cargo test --workspace --locked "$@"
