//! Flex's quantized weights on `ember-kernels` against the portable form (dequantized with
//! burn ops, then a float matmul), for every GGUF type of the dequantization fixture, in f32
//! and f16: products within the kernels' 8-bit input quantization, rows looked up as the
//! host dequantizes them, ids past the end as zero rows.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use ember::format::gguf::GgufFile;
use ember::format::QuantizedRows;
use ember::nn::linear::{QuantizedWeight, Weight};
use ember::nn::FusedOps;
use ember_flex::fused::FlexFused;
use ember_flex::Backend as Flex;

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().iter::<f32>().collect()
}

#[test]
fn native_weights_equal_the_portable_form_for_every_type() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-tests/fixtures/dequant/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let device = Default::default();
    let mut native_types = Vec::new();
    for info in file.tensors() {
        let Some(unpacked) = file.unpack(info) else {
            continue;
        };
        let [rows, cols] = match info.shape()[..] {
            [r, c] => [r, c],
            [c] => [1, c],
            ref s => panic!("{}: {s:?}", info.name),
        };
        let ty = format!("{:?}", info.ty);
        for dtype in [DType::F32, DType::F16] {
            let tensor = QuantizedRows::whole(unpacked.clone(), [rows, cols]);
            let Some(native) =
                FusedOps::<Flex>::quantized(&FlexFused::default(), &tensor, &device, dtype)
                    .unwrap()
            else {
                assert_eq!(ty, "Q2_K", "only Q2_K lacks a block layout");
                continue;
            };
            let portable = QuantizedWeight::<Flex>::new(&unpacked, [rows, cols], &device, dtype);
            let x =
                Tensor::<Flex, 3>::random([1, 3, cols], Distribution::Uniform(-1.0, 1.0), &device)
                    .cast(dtype);
            let got = values(Weight::Native(native.clone()).forward(x.clone()));
            let want = values(Weight::Quantized(portable.clone()).forward(x));
            let w = values(portable.dequantize());
            // The kernels' error: half an 8-bit step of the inputs (max |x| <= 1) per weight,
            // plus f16 rounding of the result in an f16 run.
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let r = i % rows;
                let row_abs: f32 = w[r * cols..(r + 1) * cols].iter().map(|v| v.abs()).sum();
                let f16_slack = if dtype == DType::F16 {
                    2e-3 * e.abs() + 2e-3 * row_abs
                } else {
                    0.0
                };
                let bound = row_abs / 127.0 + 1e-4 + f16_slack;
                assert!(
                    (g - e).abs() <= bound,
                    "{ty} {dtype:?} [{i}]: {g} vs {e} (bound {bound})"
                );
            }
            let ids = Tensor::<Flex, 1, Int>::from_data([rows as i64 - 1, rows as i64], &device);
            let looked_up = values(native.0.rows(ids));
            let last = &values(portable.dequantize())[(rows - 1) * cols..];
            let largest = last.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, e) in looked_up[..cols].iter().zip(last) {
                let tol = if ty.ends_with("_K") || dtype == DType::F16 {
                    2e-3 * largest
                } else {
                    0.0
                };
                assert!((g - e).abs() <= tol, "{ty} {dtype:?} row: {g} vs {e}");
            }
            assert!(
                looked_up[cols..].iter().all(|&v| v == 0.0),
                "{ty}: an id past the end"
            );
        }
        native_types.push(ty);
    }
    native_types.sort();
    assert_eq!(
        native_types,
        ["Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
    );
}

/// Flex's in-place KV cache write equals burn's `slice_assign` (f32, f16, bf16), and
/// declines (handing the tensor back) where it cannot write in place.
#[test]
fn positions_written_in_place_equal_slice_assign() {
    let device = Default::default();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let cache =
            Tensor::<Flex, 4>::random([2, 3, 16, 8], Distribution::Default, &device).cast(dtype);
        let new =
            Tensor::<Flex, 4>::random([2, 3, 5, 8], Distribution::Default, &device).cast(dtype);
        let want = values(
            cache
                .clone()
                .slice_assign([0..2, 0..3, 7..12, 0..8], new.clone()),
        );
        // A copy of its own, so that the write can be in place.
        let owned = Tensor::<Flex, 4>::from_data(cache.to_data(), (&device, dtype));
        let got = FusedOps::<Flex>::write_positions(&FlexFused::default(), owned, 7, &new)
            .unwrap_or_else(|_| panic!("{dtype:?}: a uniquely owned cache is written in place"));
        assert_eq!(values(got), want, "{dtype:?}");
        // Shared: declined, untouched.
        let shared = Tensor::<Flex, 4>::from_data(cache.to_data(), (&device, dtype));
        let other = shared.clone();
        let back = FusedOps::<Flex>::write_positions(&FlexFused::default(), shared, 7, &new)
            .expect_err("a shared cache is not written in place");
        assert_eq!(
            values(back),
            values(other),
            "{dtype:?}: declined write left it"
        );
        // Past the end: declined.
        let owned = Tensor::<Flex, 4>::from_data(cache.to_data(), (&device, dtype));
        assert!(FusedOps::<Flex>::write_positions(&FlexFused::default(), owned, 12, &new).is_err());
    }
}
