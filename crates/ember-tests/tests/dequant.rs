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
