//! Every quantized GGUF type of the dequantization fixture (blocks written by the `gguf`
//! Python package) in its block layout: rows dequantize to the host's dequantization (f16
//! rounding of K-quant sub-block scales aside), and products equal the f32 product of the
//! dequantized weight within the inputs' 8-bit quantization, on every instruction set this
//! CPU runs (the scalar path included).

use std::path::PathBuf;

use ember::format::gguf::GgufFile;
use ember_kernels::{Groups, Isa, QuantMatrix};
use rand::{Rng, SeedableRng};

#[test]
fn every_gguf_type_multiplies_as_its_dequantized_weights() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-tests/fixtures/dequant/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (mut packed, mut refused) = (Vec::new(), Vec::new());
    for info in file.tensors() {
        let Some(unpacked) = file.unpack(info) else {
            continue; // a float type
        };
        let (rows, cols) = match info.shape()[..] {
            [r, c] => (r, c),
            [c] => (1, c),
            ref s => panic!("{}: shape {s:?}", info.name),
        };
        let groups = Groups {
            bits: unpacked.bits,
            group: unpacked.group,
            u: &unpacked.u,
            scale: &unpacked.scale,
            min: &unpacked.min,
        };
        let ty = format!("{:?}", info.ty);
        let m = match QuantMatrix::new(groups, rows, cols) {
            Ok(m) => m,
            Err(_) => {
                refused.push(ty);
                continue;
            }
        };
        // Packed in two parts of rows (as a weight is loaded; the first whole quads of rows),
        // it is the same matrix.
        let half = rows / 2 / ember_kernels::QUAD * ember_kernels::QUAD;
        if half > 0 {
            let pack = |range: std::ops::Range<usize>| {
                let part = unpacked.rows(cols, range.clone());
                let groups = Groups {
                    bits: part.bits,
                    group: part.group,
                    u: &part.u,
                    scale: &part.scale,
                    min: &part.min,
                };
                QuantMatrix::new(groups, range.len(), cols).unwrap()
            };
            let mut joined = pack(0..half);
            joined.append_rows(&pack(half..rows), rows).unwrap();
            assert_eq!((joined.rows(), joined.bytes()), (rows, m.bytes()), "{ty}");
            let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                m.dequantize_row(r, &mut a);
                joined.dequantize_row(r, &mut b);
                assert_eq!(a, b, "{ty} row {r} packed in two parts");
            }
        }
        let want = file.dequantize(info).unwrap();
        let k_quant = ty.ends_with("_K");
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            let wanted = &want[r * cols..(r + 1) * cols];
            let largest = wanted.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (k, (&got, &w)) in row.iter().zip(wanted).enumerate() {
                // Exact for the 32-blocks; K-quants' sub-block scale and offset are rounded
                // to f16 (2^-11 of each, which can nearly cancel: relative to the row's range).
                let tol = if k_quant { 2e-3 * largest } else { 0.0 };
                assert!((got - w).abs() <= tol, "{ty} [{r},{k}]: {got} vs {w}");
            }
        }
        let n = 5; // four inputs at once, then one
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        for isa in Isa::available() {
            let mut out = vec![0f32; n * rows];
            m.matmul_on(isa, &x, n, &mut out);
            for j in 0..n {
                for r in 0..rows {
                    let w = &want[r * cols..(r + 1) * cols];
                    let exact: f32 = x[j * cols..].iter().zip(w).map(|(a, b)| a * b).sum();
                    let bound = w.iter().map(|v| v.abs()).sum::<f32>() / 127.0 + 1e-4;
                    let got = out[j * rows + r];
                    assert!(
                        (got - exact).abs() <= bound,
                        "{ty} {isa:?} [{j},{r}]: {got} vs {exact}"
                    );
                }
            }
        }
        packed.push(ty);
    }
    packed.sort();
    assert_eq!(
        packed,
        ["Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
    );
    assert_eq!(
        refused,
        ["Q2_K"],
        "Q2_K's offsets are not symmetric: no block layout"
    );
}
