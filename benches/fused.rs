//! The fused ops a CPU backend registers (`ember::nn::FusedOps`; today tch's, through
//! libtorch) against their portable defaults, the compositions of burn ops every backend
//! runs, at SmolLM2-135M's decode shapes in f32. `cargo bench -p ember-benches --features
//! tch --bench fused`.

use burn::prelude::*;
use divan::Bencher;
use ember::nn::attention::attend_all;
use ember::nn::{linear_add, rms_norm, Fused};
use ember::{AttentionImpl, BackendName};
use ember_benches::{smollm2_on_cpu, tensor};

type B = ember_tch::Backend;

/// The two paths of each op: the backend's fused op, and the portable default.
const PATHS: &[&str] = &["fused", "portable"];

fn main() {
    divan::main();
}

/// libtorch's CPU device and the fused ops ember-tch hands out for it.
fn setup() -> (burn::backend::libtorch::LibTorchDevice, Fused<B>) {
    let config = smollm2_on_cpu(BackendName::Tch);
    let (device, _) = ember_tch::init(&config.backend).expect("libtorch runs on the CPU");
    let fused = ember_tch::capabilities(&device)
        .fused
        .expect("ember-tch has fused ops on the CPU");
    (device, fused)
}

/// RMSNorm of one token's hidden state, `[1, 1, 576]`.
#[divan::bench(args = PATHS)]
fn rms_norm_576(bencher: Bencher<'_, '_>, path: &str) {
    let (device, fused) = setup();
    let x = tensor::<B, 3>([1, 1, 576], 1, &device);
    let w = tensor::<B, 1>([576], 2, &device);
    bencher.bench_local(|| match path {
        "fused" => fused.ops().rms_norm(&x, &w, 1e-5).expect("tch fuses it"),
        _ => rms_norm(x.clone(), &w, 1e-5),
    });
}

/// The MLP's down projection added to the residual: `[1, 1, 1536] x [1536, 576] + [1, 1,
/// 576]`.
#[divan::bench(args = PATHS)]
fn linear_add_1536x576(bencher: Bencher<'_, '_>, path: &str) {
    let (device, fused) = setup();
    let residual = tensor::<B, 3>([1, 1, 576], 1, &device);
    let x = tensor::<B, 3>([1, 1, 1536], 2, &device);
    let w = tensor::<B, 2>([1536, 576], 3, &device);
    bencher.bench_local(|| match path {
        "fused" => fused
            .ops()
            .linear_add(&residual, &x, &w)
            .expect("tch fuses it"),
        _ => linear_add(residual.clone(), x.clone(), &w),
    });
}

/// A decode step's attention: 3 KV heads with 3 query heads each over a 256-position
/// window, the last 56 positions hidden by the padding bias.
#[divan::bench(args = PATHS)]
fn attention_decode(bencher: Bencher<'_, '_>, path: &str) {
    let (device, fused) = setup();
    let q = tensor::<B, 4>([1, 3, 3, 64], 1, &device);
    let k = tensor::<B, 4>([1, 3, 256, 64], 2, &device);
    let v = tensor::<B, 4>([1, 3, 256, 64], 3, &device);
    let hidden: Vec<f32> = (0..256)
        .map(|i| if i < 200 { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    let bias = Tensor::<B, 1>::from_floats(hidden.as_slice(), &device).reshape([1, 1, 1, 256]);
    bencher.bench_local(|| match path {
        "fused" => fused
            .ops()
            .attention(&q, &k, &v, Some(&bias))
            .expect("tch fuses it"),
        _ => attend_all(
            q.clone(),
            k.clone(),
            v.clone(),
            Some(&bias),
            AttentionImpl::Fused,
        ),
    });
}
