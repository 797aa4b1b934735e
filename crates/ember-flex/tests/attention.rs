//! Flex's decode attention ([`FlexFused`]'s `attention`, read in place from the cache)
//! against the portable matmul-softmax reference (`attend_all` with
//! `AttentionImpl::Plain`), f32, on the shapes the models hand it: K and V as views of a
//! longer cache (strided), query heads grouped on their KV head, a bias that hides
//! positions and is broadcast (stride 0) over heads; prefills (burn's op run per head on the
//! kernels' pool), causal or with a bias; and the shapes it declines.

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use ember::config::AttentionImpl;
use ember::nn::attention::{attend_all, causal_attention, causal_attention_with};
use ember::nn::FusedOps;
use ember_flex::fused::FlexFused;
use ember_flex::Backend as Flex;

fn random(shape: [usize; 4]) -> Tensor<Flex, 4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn max_error(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.into_data(), b.into_data());
    a.iter::<f32>()
        .zip(b.iter::<f32>())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `[batch, kv_heads, groups, dim]` queries over the first `visible` of `capacity` cached
/// positions, the last `hidden` of them masked by the bias.
fn case(batch: usize, kv_heads: usize, groups: usize, dim: usize, visible: usize, hidden: usize) {
    let capacity = visible + 7;
    let q = random([batch, kv_heads, groups, dim]);
    // The cache's view: positions 0..visible of a [batch, kv_heads, capacity, dim] buffer.
    let k = random([batch, kv_heads, capacity, dim]).narrow(2, 0, visible);
    let v = random([batch, kv_heads, capacity, dim]).narrow(2, 0, visible);
    let row: Vec<f32> = (0..visible)
        .map(|t| {
            if t >= visible - hidden {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let bias = Tensor::<Flex, 1>::from_floats(row.as_slice(), &Default::default())
        .reshape([1, 1, 1, visible])
        .expand([batch, kv_heads, groups, visible]);
    let fused = FlexFused::default()
        .attention(&q, &k, &v, Some(&bias))
        .expect("flex runs f32 decode attention");
    let reference = attend_all(q, k, v, Some(&bias), AttentionImpl::Plain);
    let err = max_error(fused, reference);
    assert!(
        err <= 1e-5,
        "batch {batch}, kv heads {kv_heads}, groups {groups}, dim {dim}, {visible} keys \
         ({hidden} hidden): max error {err}"
    );
}

#[test]
fn decode_attention_equals_the_reference() {
    // SmolLM2-135M (3 KV heads, 3 query heads each, head_dim 64), Gemma 3 (one KV head,
    // 4 query heads, 256), a batch of serving slots with hidden padding, one key.
    case(1, 3, 3, 64, 37, 0);
    case(1, 1, 4, 256, 600, 0);
    case(3, 3, 3, 64, 20, 5);
    case(2, 2, 1, 64, 1, 0);
    // More than one dimension chunk left over (dim not a multiple of 8).
    case(1, 2, 2, 12, 9, 2);
}

#[test]
fn without_a_bias_every_key_is_attended() {
    let q = random([1, 2, 3, 64]);
    let k = random([1, 2, 10, 64]);
    let v = random([1, 2, 10, 64]);
    let fused = FlexFused::default().attention(&q, &k, &v, None).unwrap();
    let reference = attend_all(q, k, v, None, AttentionImpl::Plain);
    assert!(max_error(fused, reference) <= 1e-5);
}

#[test]
fn prefills_run_per_head_and_equal_the_reference() {
    let ops = FlexFused::default();
    let (batch, heads, seq, dim) = (2, 3, 40, 64);
    let (q, k, v) = (
        random([batch, heads, seq, dim]),
        random([batch, heads, seq, dim]),
        random([batch, heads, seq, dim]),
    );
    let causal = causal_attention_with(
        q.clone(),
        k.clone(),
        v.clone(),
        AttentionImpl::Fused,
        Some(&ops),
    );
    let reference = causal_attention(q.clone(), k.clone(), v.clone(), AttentionImpl::Plain);
    let err = max_error(causal, reference);
    assert!(err <= 1e-5, "causal prefill: max error {err}");
    // A bias shared by the heads (size 1 there), different per batch row.
    let bias = random([batch, 1, seq, seq]).mul_scalar(3.0);
    let ours = ops
        .attention(&q, &k, &v, Some(&bias))
        .expect("flex runs prefills per head");
    let reference = attend_all(q, k, v, Some(&bias), AttentionImpl::Plain);
    let err = max_error(ours, reference);
    assert!(err <= 1e-5, "prefill with a bias: max error {err}");
}

#[test]
fn other_shapes_and_dtypes_go_the_portable_way() {
    let ops = FlexFused::default();
    // f16.
    let half = |t: &Tensor<Flex, 4>| t.clone().cast(DType::F16);
    let (q, k, v) = (
        random([1, 2, 1, 64]),
        random([1, 2, 9, 64]),
        random([1, 2, 9, 64]),
    );
    assert!(ops
        .attention(&half(&q), &half(&k), &half(&v), None)
        .is_none());
    // Transposed keys (last dimension strided).
    let kt = random([1, 2, 64, 9]).swap_dims(2, 3);
    assert!(ops.attention(&q, &kt, &v, None).is_none());
}
