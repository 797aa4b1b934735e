//! Limits checked before work starts: a model too large for the machine's memory.

use ember::source::Checkpoint;
use ember::{DType, Embedder, Engine, EngineConfig};
use ember_tests::{fixtures, minilm_config, spec};

type B = ember_flex::Backend;

fn load(source: &str) -> ember::Result<Engine<B>> {
    let (device, runtime) = ember_flex::init(&spec("flex", "cpu", DType::F32)).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = source.into();
    let capabilities = ember_flex::capabilities(&device);
    Engine::load(&config, &device, runtime, &capabilities)
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
        assert_eq!(
            engine.model().declared_params(),
            engine.model().num_params() as u128,
            "{variant}"
        );
    }
}

/// Copies `from` into `to` (and its folders, such as `1_Pooling/`) but the safetensors files.
fn copy_without_weights(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_without_weights(&path, &target);
        } else if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            std::fs::copy(&path, target).unwrap();
        }
    }
}

fn load_encoder(config: &EngineConfig) -> ember::Result<Embedder<B>> {
    let (device, runtime) = ember_flex::init(&spec("flex", "cpu", DType::F32)).unwrap();
    Embedder::load(config, &device, runtime)
}

#[test]
fn an_encoder_larger_than_memory_fails_before_reading_its_weights() {
    let Checkpoint::HfDir(real) = ember::source::resolve(&minilm_config().model).unwrap() else {
        panic!("all-MiniLM-L6-v2 is a Hugging Face directory");
    };
    // all-MiniLM-L6-v2's files without its weights, its config.json declaring about
    // 6 * 10^13 weights: the check must fail before the (absent) safetensors file is opened.
    let dir = std::env::temp_dir().join(format!("ember-huge-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    copy_without_weights(&real, &dir);
    let text = std::fs::read_to_string(real.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["hidden_size"] = 61440.into(); // 12 heads of 5120
    json["intermediate_size"] = 262144.into();
    json["num_hidden_layers"] = 2048.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = dir.display().to_string();
    let Err(err) = load_encoder(&config) else {
        panic!("the load must fail")
    };
    let message = err.to_string();
    assert!(matches!(err, ember::Error::OutOfMemory { .. }), "{message}");
    assert!(bytes_after(&message, "needs ") > bytes_after(&message, "but only "));
    assert!(message.contains("parameters in f32"), "{message}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_encoder_memory_estimate_counts_the_weights_it_loads() {
    let embedder = load_encoder(&minilm_config()).unwrap();
    let model = embedder.model();
    assert_eq!(
        model.config().param_count() * 4,
        model.weights_bytes() as u128
    );
}
