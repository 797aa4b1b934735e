//! Flex's decode attention ([`FlexFused`]'s `attention`, read in place from the cache)
//! against the portable matmul-softmax reference (`attend_all` with
//! `AttentionImpl::Plain`), f32, on the shapes the models hand it: K and V as views of a
//! longer cache (strided), query heads grouped on their KV head, a bias that hides
//! positions and is broadcast (stride 0) over heads; prefills (the blocked kernel of
//! `ember_flex`'s `flash` module), causal, with a sliding-window bias or none, on every
//! instruction set this CPU runs, the portable loops included; and the shapes it declines.

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use ember::config::AttentionImpl;
use ember::nn::attention::{
    attend_all, causal_attention, causal_attention_with, position_bias, repeat_kv,
};
use ember::nn::FusedOps;
use ember_flex::fused::FlexFused;
use ember_flex::Backend as Flex;
use ember_kernels::Isa;

/// Largest difference allowed from the reference for f32 prefills: the kernel sums the
/// products and the softmax in another order than the matmul-softmax reference (and its
/// `exp` is a polynomial within 4e-7 of libm's); outputs are averages of values of size ~1.
const PREFILL_TOLERANCE: f32 = 1e-5;

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
    let reference = attend_all(
        q.clone(),
        k.clone(),
        v.clone(),
        Some(&bias),
        AttentionImpl::Plain,
    );
    for isa in isas() {
        let fused = FlexFused::default()
            .with_attention_isa(isa)
            .attention(&q, &k, &v, Some(&bias))
            .expect("flex runs f32 decode attention");
        let err = max_error(fused, reference.clone());
        assert!(
            err <= 1e-5,
            "{isa:?}, batch {batch}, kv heads {kv_heads}, groups {groups}, dim {dim}, \
             {visible} keys ({hidden} hidden): max error {err}"
        );
    }
}

#[test]
fn decode_attention_equals_the_reference() {
    // SmolLM2-135M (3 KV heads, 3 query heads each, head_dim 64), Gemma 3 (one KV head,
    // 4 query heads, 256), a batch of serving slots with hidden padding, one key.
    case(1, 3, 3, 64, 37, 0);
    case(1, 1, 4, 256, 600, 0);
    case(3, 3, 3, 64, 20, 5);
    case(2, 2, 1, 64, 1, 0);
    // Keys not a multiple of the vectorized loop's four, padding that hides whole groups
    // of four and part of one, a 256-wide head hiding most keys.
    case(2, 3, 3, 64, 23, 0);
    case(4, 3, 3, 64, 42, 13);
    case(1, 1, 4, 256, 70, 66);
    // More than one dimension chunk left over (dim not a multiple of 8).
    case(1, 2, 2, 12, 9, 2);
}

/// A batched step's rows, each with its own hidden tail of the decode window (the kernel
/// stops at a row's last shown key, change 47) and one with a hidden start as well (a
/// sliding window), equal the reference row by row.
#[test]
fn rows_with_their_own_hidden_tails_equal_the_reference() {
    let (batch, kv_heads, groups, dim, visible) = (4, 3, 3, 64, 48);
    // (hidden start, hidden tail) per row: none, part of a group of four, most keys, both.
    let masks = [(0, 0), (0, 6), (0, 41), (9, 20)];
    let q = random([batch, kv_heads, groups, dim]);
    let k = random([batch, kv_heads, visible + 5, dim]).narrow(2, 0, visible);
    let v = random([batch, kv_heads, visible + 5, dim]).narrow(2, 0, visible);
    let values: Vec<f32> = masks
        .iter()
        .flat_map(|&(start, tail)| {
            (0..visible).map(move |t| {
                if t < start || t >= visible - tail {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let bias = Tensor::<Flex, 1>::from_floats(values.as_slice(), &Default::default())
        .reshape([batch, 1, 1, visible])
        .expand([batch, kv_heads, groups, visible]);
    let reference = attend_all(
        q.clone(),
        k.clone(),
        v.clone(),
        Some(&bias),
        AttentionImpl::Plain,
    );
    for isa in isas() {
        let fused = FlexFused::default()
            .with_attention_isa(isa)
            .attention(&q, &k, &v, Some(&bias))
            .expect("flex runs f32 decode attention");
        let err = max_error(fused, reference.clone());
        assert!(err <= 1e-5, "{isa:?}: max error {err}");
    }
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

/// `causal_attention_with` given K and V with fewer heads than q (as the models now pass
/// them): through flex's kernel, through burn's ops where there is no hook (it repeats
/// them), and for one query, all equal to the reference on repeated K and V.
#[test]
fn grouped_kv_heads_are_repeated_only_where_needed() {
    let ops = FlexFused::default();
    for seq in [1, 40] {
        let [q, k, v] = projected(2, 2, 3, seq, 64);
        let (kr, vr) = (repeat_kv(k.clone(), 3), repeat_kv(v.clone(), 3));
        let reference = causal_attention(q.clone(), kr, vr, AttentionImpl::Plain);
        for (name, fused) in [("flex", Some(&ops as &dyn FusedOps<Flex>)), ("burn", None)] {
            for imp in [AttentionImpl::Fused, AttentionImpl::Plain] {
                let out = causal_attention_with(q.clone(), k.clone(), v.clone(), imp, fused);
                let err = max_error(out, reference.clone());
                assert!(
                    err <= PREFILL_TOLERANCE,
                    "{name} {imp:?}, {seq} positions: max error {err}"
                );
            }
        }
    }
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

/// Every instruction set the kernels run here: the portable loops (`Isa::Scalar`) and, on
/// x86-64 with AVX2 and FMA, the vectorized ones.
fn isas() -> Vec<Isa> {
    let isas = Isa::available();
    assert_eq!(isas[0], Isa::Scalar);
    isas
}

/// q, k and v of a prefill as the models hand them over: views of one `[batch, seq,
/// heads + 2 * kv_heads, dim]` projection output, heads swapped before positions (strided).
fn projected(
    batch: usize,
    kv_heads: usize,
    groups: usize,
    seq: usize,
    dim: usize,
) -> [Tensor<Flex, 4>; 3] {
    let heads = kv_heads * groups;
    let qkv = random([batch, seq, heads + 2 * kv_heads, dim]).swap_dims(1, 2);
    [
        qkv.clone().narrow(1, 0, heads),
        qkv.clone().narrow(1, heads, kv_heads),
        qkv.narrow(1, heads + kv_heads, kv_heads),
    ]
}

/// The causal prefill hook against the matmul-softmax reference with a causal bias, K and
/// V repeated to the query heads as the models pass them, and not repeated (the kernel
/// reads KV head `h / groups`).
fn causal_case(batch: usize, kv_heads: usize, groups: usize, dim: usize, seq: usize) {
    let [q, k, v] = projected(batch, kv_heads, groups, seq, dim);
    let (kr, vr) = (repeat_kv(k.clone(), groups), repeat_kv(v.clone(), groups));
    let reference = causal_attention(q.clone(), kr.clone(), vr.clone(), AttentionImpl::Plain);
    for isa in isas() {
        let ops = FlexFused::default().with_attention_isa(isa);
        for (repeated, k, v) in [(true, &kr, &vr), (false, &k, &v)] {
            let ours = ops
                .causal_attention(&q, k, v)
                .expect("flex runs f32 causal prefills");
            let err = max_error(ours, reference.clone());
            assert!(
                err <= PREFILL_TOLERANCE,
                "{isa:?}, batch {batch}, kv heads {kv_heads}, groups {groups}, dim {dim}, \
                 seq {seq}, K/V repeated {repeated}: max error {err}"
            );
        }
    }
}

#[test]
fn causal_prefills_equal_the_reference_on_every_isa() {
    // SmolLM2's head_dim 64 and Gemma 3's 256, KV heads shared by 1 and 3 query heads; one
    // token, fewer rows than a block, a block and a bit, several key blocks.
    for dim in [64, 256] {
        for groups in [1, 3] {
            for seq in [1, 7, 33, 300] {
                causal_case(2, 2, groups, dim, seq);
            }
        }
    }
    // A head_dim that is not a multiple of the kernel's 16 columns.
    causal_case(1, 1, 2, 40, 29);
}

#[test]
fn prefills_with_a_bias_equal_the_reference_on_every_isa() {
    // Gemma 3's prefill: a sliding window's position bias, [1, 1, queries, keys] expanded,
    // here for 70 queries appended to 30 cached positions (q_len < k_len); and no bias (an
    // encoder's attention, every key seen).
    let (batch, kv_heads, groups, dim) = (2, 1, 4, 256);
    let [q, _, _] = projected(batch, kv_heads, groups, 70, dim);
    let [_, k, v] = projected(batch, kv_heads, groups, 100, dim);
    let heads = kv_heads * groups;
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    let bias = position_bias::<Flex>(30, 70, 100, Some(40), DType::F32, &Default::default())
        .expand([batch, heads, 70, 100]);
    let reference = attend_all(
        q.clone(),
        k.clone(),
        v.clone(),
        Some(&bias),
        AttentionImpl::Plain,
    );
    let plain = attend_all(q.clone(), k.clone(), v.clone(), None, AttentionImpl::Plain);
    for isa in isas() {
        let ops = FlexFused::default().with_attention_isa(isa);
        let ours = ops.attention(&q, &k, &v, Some(&bias)).expect("f32 prefill");
        let err = max_error(ours, reference.clone());
        assert!(err <= PREFILL_TOLERANCE, "{isa:?}, sliding window: {err}");
        let ours = ops.attention(&q, &k, &v, None).expect("f32 prefill");
        let err = max_error(ours, plain.clone());
        assert!(err <= PREFILL_TOLERANCE, "{isa:?}, no bias: {err}");
    }
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
