//! One decode step of SmolLM2-135M's shape (seeded random weights, `preset:smollm2-135m`)
//! on each CPU backend, in f32: flex and candle, and tch with `--features tch` (libtorch,
//! `scripts/fetch-libtorch.sh`). `cargo bench -p ember-benches --bench decode`.

use divan::Bencher;
use ember::{BackendName, Engine};
use ember_benches::{decode_steps, smollm2_on_cpu};

fn main() {
    divan::main();
}

#[cfg(feature = "flex")]
#[divan::bench(sample_count = 20)]
fn flex(bencher: Bencher<'_, '_>) {
    let config = smollm2_on_cpu(BackendName::Flex);
    let (device, runtime) = ember_flex::init(&config.backend).expect("flex runs on the CPU");
    let engine = Engine::<ember_flex::Backend>::load(
        &config,
        &device,
        runtime,
        &ember_flex::capabilities(&device),
    )
    .expect("the preset loads");
    decode_steps(bencher, &engine);
}

#[cfg(feature = "candle")]
#[divan::bench(sample_count = 20)]
fn candle(bencher: Bencher<'_, '_>) {
    let config = smollm2_on_cpu(BackendName::Candle);
    let (device, runtime) = ember_candle::init(&config.backend).expect("candle runs on the CPU");
    let engine = Engine::<ember_candle::Backend>::load(
        &config,
        &device,
        runtime,
        &ember_candle::capabilities(&device),
    )
    .expect("the preset loads");
    decode_steps(bencher, &engine);
}

#[cfg(feature = "tch")]
#[divan::bench(sample_count = 20)]
fn tch(bencher: Bencher<'_, '_>) {
    let config = smollm2_on_cpu(BackendName::Tch);
    let (device, runtime) = ember_tch::init(&config.backend).expect("libtorch runs on the CPU");
    let engine = Engine::<ember_tch::Backend>::load(
        &config,
        &device,
        runtime,
        &ember_tch::capabilities(&device),
    )
    .expect("the preset loads");
    decode_steps(bencher, &engine);
}
