//! Limits checked before work starts: a model too large for the machine's memory.

use ember::{DType, Engine, EngineConfig};
use ember_tests::{fixtures, spec};

type B = ember_flex::Backend;

fn load(source: &str) -> ember::Result<Engine<B>> {
    let (device, runtime) = ember_flex::init(&spec("flex", "cpu", DType::F32)).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = source.into();
    Engine::load(&config, &device, runtime)
}

/// `123.45 GiB (132555..., bytes)` -> the byte count.
fn bytes_after(message: &str, marker: &str) -> u128 {
    let rest =
        &message[message.find(marker).unwrap_or_else(|| panic!("{message}")) + marker.len()..];
    let open = rest.find('(').unwrap() + 1;
    let close = rest[open..].find(" bytes)").unwrap() + open;
    rest[open..close].parse().unwrap()
}

#[test]
fn a_model_larger_than_memory_fails_before_allocating_with_both_numbers() {
    // About 9 * 10^12 weights: no machine has that, and allocating would abort the process.
    let err = load("preset:smollm2-1.7b,hidden=65536,intermediate=262144,layers=1024")
        .expect_err("the load must fail");
    let message = err.to_string();
    assert!(matches!(err, ember::Error::OutOfMemory { .. }), "{message}");
    let needed = bytes_after(&message, "needs ");
    let available = bytes_after(&message, "but only ");
    assert!(needed > available, "{message}");
    assert!(message.contains("parameters in f32"), "{message}");
}

#[test]
fn the_memory_estimate_counts_the_weights_the_model_loads() {
    for variant in ["gqa-untied", "mha-tied"] {
        let dir = fixtures().join("tiny").join(variant).join("hf");
        let engine = load(&dir.display().to_string()).unwrap();
        let config = engine.model().config();
        assert_eq!(
            config.param_count(),
            engine.model().num_params() as u128,
            "{variant}"
        );
    }
}
