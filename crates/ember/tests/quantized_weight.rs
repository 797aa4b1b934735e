//! A weight kept quantized on the device (`[model] weights = "keep"`) dequantizes, whole and
//! row by row, to the values the host's dequantization gives, for every quantized ggml type
//! of the dequantization fixture (each block format packed into f32 words, unpacked with
//! burn ops on flex).

use std::path::PathBuf;

use burn::prelude::*;
use ember::format::gguf::GgufFile;
use ember::nn::linear::QuantizedWeight;

#[test]
fn kept_weights_dequantize_on_the_device_as_on_the_host() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-tests/fixtures/dequant/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let device = Default::default();
    let mut types = Vec::new();
    for info in file.tensors() {
        let Some(unpacked) = file.unpack(info) else {
            continue; // a float type
        };
        let shape = info.shape();
        let (rows, cols) = match shape[..] {
            [r, c] => (r, c),
            [c] => (1, c),
            _ => panic!("{}: shape {shape:?}", info.name),
        };
        let want = file.dequantize(info).unwrap();
        let weight = QuantizedWeight::<ember_flex::Backend>::new(
            &unpacked,
            [rows, cols],
            &device,
            burn::tensor::DType::F32,
        );
        let got: Vec<f32> = weight.dequantize().into_data().iter::<f32>().collect();
        assert_eq!(got, want, "{} ({:?}): whole weight", info.name, info.ty);
        let last = Tensor::<ember_flex::Backend, 1, Int>::from_data([rows as i64 - 1], &device);
        let row: Vec<f32> = weight.rows(last).into_data().iter::<f32>().collect();
        assert_eq!(row, want[(rows - 1) * cols..], "{}: last row", info.name);
        types.push(format!("{:?}", info.ty));
    }
    types.sort();
    assert_eq!(
        types,
        ["Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
    );
}
