//! The matrix-vector product of a decode step with a weight kept quantized (`[model] weights
//! = "keep"`), per GGUF type, at SmolLM2-135M's MLP down projection (`[576, 1536]`, one
//! token), against the dense f32 product of the same shape. `cargo bench -p ember-benches
//! --bench quantized`.
//!
//! One function per path, each over [`QUANT_TYPES`]: a new path (a kernel on the GGUF
//! blocks, [`ember_benches::gguf_blocks`]) is one more function like [`portable`], and its
//! rows line up with the others by type.

use burn::prelude::*;
use divan::Bencher;
use ember::format::gguf::GgmlType;
use ember::nn::linear::Weight;
use ember_benches::{quantized_weight, tensor, DOWN_PROJ, QUANT_TYPES};

type B = ember_flex::Backend;

fn main() {
    divan::main();
}

/// One token's activations, `[1, 1, in]`.
fn activations(device: &burn::backend::flex::FlexDevice) -> Tensor<B, 3> {
    tensor([1, 1, DOWN_PROJ[1]], 2, device)
}

/// The portable path on flex: `Weight::Quantized`'s forward, which dequantizes the whole
/// weight with burn ops, then multiplies in f32.
#[divan::bench(args = QUANT_TYPES)]
fn portable(bencher: Bencher<'_, '_>, ty: GgmlType) {
    let device = Default::default();
    let weight = Weight::Quantized(quantized_weight::<B>(ty, DOWN_PROJ, 1, &device));
    let x = activations(&device);
    bencher.bench_local(|| weight.forward(x.clone()).into_data());
}

/// Flex's kernels on the blocks (`ember-kernels` through `FusedOps::quantized`): the weight
/// repacked into its block layout at load, multiplied with 8-bit quantized activations on
/// the best instruction set this CPU runs. Q2_K has no block layout (portable only).
#[divan::bench(args = QUANT_TYPES)]
fn kernel(bencher: Bencher<'_, '_>, ty: GgmlType) {
    use ember::nn::FusedOps;
    let device = Default::default();
    let bytes = ember_benches::gguf_blocks(ty, DOWN_PROJ, 1);
    let unpacked = ember::format::quant::unpack(ty, &bytes, DOWN_PROJ[0] * DOWN_PROJ[1])
        .unwrap_or_else(|| panic!("{ty:?} is a quantized type Ember unpacks"));
    let fused = ember_flex::fused::FlexFused::default();
    let tensor = ember::format::QuantizedRows::whole(unpacked, DOWN_PROJ);
    let Ok(Some(native)) =
        FusedOps::<B>::quantized(&fused, &tensor, &device, burn::tensor::DType::F32)
    else {
        return;
    };
    let weight = Weight::Native(native);
    let x = activations(&device);
    bencher.bench_local(|| weight.forward(x.clone()).into_data());
}

/// The same product with the weight dequantized at load: dense f32, `[in, out]`.
#[divan::bench]
fn dense_f32(bencher: Bencher<'_, '_>) {
    let device = Default::default();
    let [out, inputs] = DOWN_PROJ;
    let weight = Weight::<B>::Dense(tensor([inputs, out], 1, &device));
    let x = activations(&device);
    bencher.bench_local(|| weight.forward(x.clone()).into_data());
}
