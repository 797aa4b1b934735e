#!/usr/bin/env bash
# The whole test suite in one command on a fresh machine with the Rust toolchain: installs
# what is missing (scripts/setup-tests.sh), then runs the command CI runs. Extra arguments go
# to `cargo test` (e.g. `scripts/test.sh -p ember-cli`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tests.sh
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
# With tch in the build, burn links libtorch into every test binary of the workspace.
export LD_LIBRARY_PATH="$PWD/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ $# -eq 0 ]; then
  set -- --workspace
fi
cargo test --features ember-cli/full "$@"
