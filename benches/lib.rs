//! What the micro-benchmarks share: seeded inputs (logits, activations, GGUF blocks of each
//! quantized type) and the shapes they run at. The bench targets are `benches/*.rs`
//! (`cargo bench -p ember-benches`, `just bench-kernels`); `ember bench` (the matrices
//! beside them) measures whole models.

use burn::prelude::*;
use burn::tensor::TensorData;
use ember::format::gguf::GgmlType;
use ember::nn::linear::QuantizedWeight;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The quantized GGUF types Ember reads, each a row of the quantized benches.
pub const QUANT_TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// SmolLM2-135M's MLP down projection, `[out, in]`: the shape of the quantized
/// matrix-vector benches (`in` a multiple of the k-quants' 256-value blocks).
pub const DOWN_PROJ: [usize; 2] = [576, 1536];

/// `n` values in about [-1, 1], seeded.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// Logits over a vocabulary of `vocab`, shaped like a language model's: a few likely tokens
/// and a long tail.
pub fn logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..vocab)
        .map(|_| {
            let u: f32 = rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>();
            (u - 1.5) * 6.0
        })
        .collect()
}

/// An f32 tensor of `shape` with [`values`] on `device`.
pub fn tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), device)
}

/// Byte offsets of the f16 scales (and offsets) in one block of `ty`, from ggml's block
/// structs (`block_q4_0`, ..., `block_q6_K` in ggml-org/ggml `src/ggml-common.h`).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// A `[rows, cols]` matrix of `ty` as a GGUF file stores it: random blocks whose f16 scales
/// are small and finite, so that the values are a plausible weight's. What a kernel on the
/// blocks reads; [`quantized_weight`] turns it into the portable kept weight.
pub fn gguf_blocks(ty: GgmlType, [rows, cols]: [usize; 2], seed: u64) -> Vec<u8> {
    let (per_block, block_bytes) = ty.block();
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    assert_eq!(cols % per_block, 0, "{ty:?} rows hold whole blocks");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes: Vec<u8> = (0..rows * cols / per_block * block_bytes)
        .map(|_| rng.random())
        .collect();
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &at in f16_fields(ty) {
            let scale = half::f16::from_f32(rng.random_range(0.001..0.01));
            block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    bytes
}

/// [`gguf_blocks`] kept quantized on `device` (`[model] weights = "keep"`), dequantizing to
/// f32: what `Weight::Quantized` holds.
pub fn quantized_weight<B: Backend>(
    ty: GgmlType,
    shape: [usize; 2],
    seed: u64,
    device: &B::Device,
) -> QuantizedWeight<B> {
    let bytes = gguf_blocks(ty, shape, seed);
    let unpacked = ember::format::quant::unpack(ty, &bytes, shape[0] * shape[1])
        .unwrap_or_else(|| panic!("{ty:?} is a quantized type Ember unpacks"));
    QuantizedWeight::new(&unpacked, shape, device, burn::tensor::DType::F32)
}

/// A config that runs SmolLM2-135M's shape with seeded random weights (`preset:`) on
/// `backend`'s CPU in f32, with a context of 512.
pub fn smollm2_on_cpu(backend: ember::BackendName) -> ember::EngineConfig {
    let mut config = ember::EngineConfig::default();
    config.model.source = "preset:smollm2-135m".into();
    config.model.context_length = Some(512);
    config.backend.name = backend;
    config.backend.device = ember::backend::DeviceSpec::Cpu;
    config.backend.dtype = ember::DType::F32;
    config
}

/// Times one decode step of `engine`'s model (one token through every layer with the KV
/// cache, logits read back) at positions 1 to 128: every 128 tokens the cache is reset and
/// refilled with one token, inside that step's time (one step in 128 pays for it).
pub fn decode_steps<B: Backend>(bencher: divan::Bencher<'_, '_>, engine: &ember::Engine<B>) {
    let mut session = engine.session();
    let token = 1;
    session.decode(token).expect("the first token decodes");
    bencher.bench_local(|| {
        if session.tokens().len() >= 128 {
            session.reset();
            session.decode(token).expect("a token decodes");
        }
        session.decode(token).expect("a token decodes")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_every_type_unpack_to_finite_values() {
        for &ty in QUANT_TYPES {
            let bytes = gguf_blocks(ty, [2, 256], 7);
            let unpacked = ember::format::quant::unpack(ty, &bytes, 512).unwrap();
            let values = unpacked.values();
            assert_eq!(values.len(), 512);
            // Scales below 0.01 times 6-bit sub-scales (int8 in Q6_K) times the integers.
            assert!(
                values.iter().all(|v| v.is_finite() && v.abs() < 64.0),
                "{ty:?}"
            );
        }
    }
}
