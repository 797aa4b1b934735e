//! Flex's one-pass RMSNorm, gated activation and RoPE ([`FlexFused`]) against the portable
//! compositions of burn ops they replace, f32, on the inputs the models hand them: the
//! residual stream, the fused gate/up product's output, the heads of the fused q/k/v
//! product as strided views, RoPE tables shared by the batch or one per row.

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use ember::nn::rope::{inv_freq, rotate, rotate_with, Rope};
use ember::nn::{gated, rms_norm, FusedOps, Gate};
use ember_flex::fused::FlexFused;
use ember_flex::Backend as Flex;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.5), &Default::default())
}

fn max_error<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.into_data(), b.into_data());
    a.iter::<f32>()
        .zip(b.iter::<f32>())
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

#[test]
fn rms_norm_equals_the_portable_one() {
    let ops = FlexFused::default();
    for [batch, seq, hidden] in [[1, 1, 576], [2, 37, 640], [1, 300, 64]] {
        let x = random([batch, seq, hidden]);
        let w = random([hidden]);
        let fused = ops.rms_norm(&x, &w, 1e-6).expect("f32 runs on flex");
        let err = max_error(fused, rms_norm(x, &w, 1e-6));
        assert!(
            err <= 1e-5,
            "[{batch}, {seq}, {hidden}]: relative error {err}"
        );
    }
    // A view that is not one contiguous run: declined.
    let x = random([2, 8, 64]).swap_dims(0, 1);
    assert!(ops.rms_norm(&x, &random([64]), 1e-6).is_none());
    let half = random([1, 2, 64]).cast(DType::F16);
    assert!(ops
        .rms_norm(&half, &random([64]).cast(DType::F16), 1e-6)
        .is_none());
}

#[test]
fn gated_activations_equal_the_portable_ones() {
    // The vectorized loop (AVX2+FMA where the CPU has them) and the portable one.
    for isa in [ember_kernels::Isa::detect(), ember_kernels::Isa::Scalar] {
        let fused = FlexFused::default().with_attention_isa(isa);
        for act in [Gate::Silu, Gate::GeluTanh] {
            for [batch, seq, inter] in [[1, 1, 1536], [2, 33, 40]] {
                // Past the exponential's range too (|g| up to ~100: e^-2u underflows).
                let gate_up = random([batch, seq, 2 * inter]) * 8.0;
                let ours = gated(gate_up.clone(), act, Some(&fused));
                let reference = gated(gate_up, act, None);
                let err = max_error(ours, reference);
                assert!(
                    err <= 1e-5,
                    "{isa:?} {act:?} [{batch}, {seq}, {inter}]: relative error {err}"
                );
            }
        }
    }
    let fused = FlexFused::default();
    // The up half must not be read as the gate (a swapped split fails here).
    let gate_up = Tensor::<Flex, 3>::from_floats([[[1.0, 2.0, 3.0, 4.0]]], &Default::default());
    let got: Vec<f32> = gated(gate_up, Gate::Silu, Some(&fused))
        .into_data()
        .iter::<f32>()
        .collect();
    let silu = |x: f32| x / (1.0 + (-x).exp());
    assert!((got[0] - silu(1.0) * 3.0).abs() < 1e-6 && (got[1] - silu(2.0) * 4.0).abs() < 1e-6);
}

#[test]
fn rope_equals_the_portable_one_on_strided_heads() {
    let fused = FlexFused::default();
    let (heads, kv, dim) = (9, 3, 64);
    let rope = Rope::<Flex>::new(
        &inv_freq(dim, 100_000.0, None),
        64,
        &Default::default(),
        DType::F32,
    );
    for (batch, seq, start) in [(1, 1, 17), (2, 12, 0), (1, 40, 3)] {
        // The heads of a fused q/k/v product: [batch, seq, heads + 2 kv, dim] swapped to
        // [batch, heads + 2 kv, seq, dim], q and k narrowed out of it.
        let qkv = random([batch, seq, heads + 2 * kv, dim]).swap_dims(1, 2);
        let qk = qkv.narrow(1, 0, heads + kv);
        let tables = rope.tables(start, seq);
        let ours = rotate_with(qk.clone(), &tables, Some(&fused));
        let err = max_error(ours, rotate(qk, &tables));
        assert!(
            err <= 1e-6,
            "batch {batch}, seq {seq}: relative error {err}"
        );
    }
    // One row of the batch per position (a serving batch's rows).
    let x = random([3, kv, 1, dim]);
    let tables = rope.tables_rows(&[5, 0, 63]);
    let err = max_error(
        rotate_with(x.clone(), &tables, Some(&fused)),
        rotate(x, &tables),
    );
    assert!(err <= 1e-6, "per-row tables: relative error {err}");
}
