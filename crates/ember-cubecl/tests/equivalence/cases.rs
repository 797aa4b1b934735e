// The cases of tests/equivalence.rs (burn's `Wgpu`, with the fusion wrapper) and tests/bare.rs
// (a bare `CubeBackend` on wgpu): each includes this file after defining `B` (the backend)
// and `f32_cases!` and `f16_cases!` (which keep or drop the cases of each dtype).

use burn::backend::wgpu::WgpuDevice;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use ember::config::AttentionImpl;
use ember::format::quant::Unpacked;
use ember::format::QuantizedRows;
use ember::nn::attention::{attend_all, position_bias};
use ember::nn::linear::{Native, Weight};
use ember::nn::rope::{inv_freq, rotate, Rope};
use ember::nn::{gated, gated_linear, linear, rms_norm, FusedOps, Gate};
use ember_cubecl::CubeFused;


fn device() -> WgpuDevice {
    WgpuDevice::default()
}

fn ops() -> CubeFused<burn::backend::wgpu::WgpuRuntime> {
    CubeFused::new()
}

/// Reproducible values in [-2, 2) (a linear congruential generator).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64, dtype: DType) -> Tensor<B, D> {
    let n = shape.iter().product();
    let t: Tensor<B, D> = Tensor::from_data(
        TensorData::new(values(n, seed), shape),
        (&device(), DType::F32),
    );
    t.cast(dtype)
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Largest absolute difference; panics on a NaN or a length mismatch.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        assert!(!d.is_nan(), "NaN: {x} vs {y}");
        m.max(d)
    })
}

fn tolerance(dtype: DType, f32_tol: f32) -> f32 {
    if dtype == DType::F32 {
        f32_tol
    } else {
        1e-2
    }
}

fn check_rms_norm(x: Tensor<B, 3>, dtype: DType, seed: u64) {
    let hidden = x.dims()[2];
    let w = tensor([hidden], seed + 1, dtype);
    let fused = FusedOps::<B>::rms_norm(&ops(), &x, &w, 1e-5)
        .unwrap_or_else(|| panic!("the kernel declined {:?} {dtype:?}", x.dims()));
    assert_eq!(fused.dims(), x.dims());
    assert_eq!(fused.dtype(), dtype);
    let portable = rms_norm(x, &w, 1e-5);
    let diff = max_diff(&host(fused), &host(portable));
    let tol = tolerance(dtype, 1e-5);
    assert!(diff <= tol, "{dtype:?}: max diff {diff} > {tol}");
}

fn rms_norm_shapes(dtype: DType) {
    // 576: SmolLM2's hidden size; 100 and 96: not multiples of a vector width or of 256;
    // 2048: more than one element per unit of the cube.
    for (i, shape) in [[1, 1, 576], [2, 5, 96], [1, 3, 100], [1, 1, 2048]]
        .into_iter()
        .enumerate()
    {
        check_rms_norm(tensor(shape, 10 + i as u64, dtype), dtype, 20 + i as u64);
    }
    // A strided view, as Gemma's per-head norm reads: [b, h, s] seen as [b, s, h].
    let x = tensor([2, 64, 3], 30, dtype).swap_dims(1, 2);
    check_rms_norm(x, dtype, 31);
}

f32_cases! {
#[test]
fn rms_norm_equals_portable_f32() {
    rms_norm_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn rms_norm_equals_portable_f16() {
    rms_norm_shapes(DType::F16);
}
}

fn check_add_rms_norm(x: Tensor<B, 3>, dtype: DType, seed: u64) {
    let dims = x.dims();
    let y = tensor(dims, seed, dtype);
    let w = tensor([dims[2]], seed + 1, dtype);
    let (sum, normed) = FusedOps::<B>::add_rms_norm(&ops(), &x, &y, &w, 1e-5)
        .unwrap_or_else(|| panic!("the kernel declined {dims:?} {dtype:?}"));
    assert_eq!((sum.dims(), normed.dims()), (dims, dims));
    assert_eq!((sum.dtype(), normed.dtype()), (dtype, dtype));
    let sum_ref = x.add(y);
    let normed_ref = rms_norm(sum_ref.clone(), &w, 1e-5);
    // The sum is one rounding of the exact sum on both paths.
    let ds = max_diff(&host(sum), &host(sum_ref));
    assert_eq!(ds, 0.0, "{dtype:?} {dims:?}: the sums differ");
    let dn = max_diff(&host(normed), &host(normed_ref));
    let tol = tolerance(dtype, 1e-5);
    assert!(dn <= tol, "{dtype:?} {dims:?}: max diff {dn} > {tol}");
}

fn add_rms_norm_shapes(dtype: DType) {
    // As for RMSNorm: SmolLM2's hidden size, sizes that are not multiples of a vector width
    // or of the cube, more than one element per unit; a prompt's rows.
    for (i, shape) in [
        [1, 1, 576],
        [2, 5, 96],
        [1, 3, 100],
        [1, 1, 2048],
        [1, 7, 576],
    ]
    .into_iter()
    .enumerate()
    {
        check_add_rms_norm(tensor(shape, 40 + i as u64, dtype), dtype, 50 + i as u64);
    }
    // A strided view (the last position of a prompt's rows, as the final norm reads).
    let x = tensor([1, 6, 576], 60, dtype).narrow(1, 5, 1);
    check_add_rms_norm(x, dtype, 61);
}

f32_cases! {
#[test]
fn add_rms_norm_equals_portable_f32() {
    add_rms_norm_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn add_rms_norm_equals_portable_f16() {
    add_rms_norm_shapes(DType::F16);
}
}

/// One decode step's attention as Llama lays it out: the query heads of one token grouped
/// onto their KV head, over the first `visible` positions of a cache of `capacity` (a strided
/// view), with the step's bias: keys after `pos` hidden and, with `sliding`, keys `sliding` or
/// more positions behind it.
#[allow(clippy::too_many_arguments)]
fn check_decode(
    heads: usize,
    kv: usize,
    hd: usize,
    pos: usize,
    visible: usize,
    sliding: Option<usize>,
    batch: usize,
    dtype: DType,
) {
    let groups = heads / kv;
    let capacity = visible + 7;
    let seed = (heads * 1000 + hd + pos) as u64;
    let q = tensor([batch, heads, 1, hd], seed, dtype).reshape([batch, kv, groups, hd]);
    let cache =
        |s| tensor([batch, kv, capacity, hd], s, dtype).slice([0..batch, 0..kv, 0..visible, 0..hd]);
    let (k, v) = (cache(seed + 1), cache(seed + 2));
    let bias = position_bias::<B>(pos, 1, visible, sliding, dtype, &device())
        .expand([batch, kv, groups, visible]);
    let fused = FusedOps::<B>::attention(&ops(), &q, &k, &v, Some(&bias))
        .unwrap_or_else(|| panic!("the kernel declined heads {heads} kv {kv} hd {hd}"));
    assert_eq!(fused.dims(), [batch, kv, groups, hd]);
    // The same step through the bias-free hook: the real length and the window's start as
    // a range of keys, q in the model's [batch, heads, 1, hd] (a strided view here).
    let first = sliding.map_or(0, |w| (pos + 1).saturating_sub(w));
    let q_heads = tensor([batch, heads + 2, 1, hd], seed + 3, dtype).narrow(1, 1, heads);
    let direct = FusedOps::<B>::decode_attention(&ops(), &q_heads, &k, &v, first..pos + 1)
        .unwrap_or_else(|| panic!("the kernel declined heads {heads} kv {kv} hd {hd}"));
    assert_eq!(direct.dims(), [batch, 1, heads * hd]);
    let grouped = q_heads.reshape([batch, kv, groups, hd]);
    let reference = attend_all(
        grouped,
        k.clone(),
        v.clone(),
        Some(&bias),
        AttentionImpl::Plain,
    )
    .reshape([batch, 1, heads * hd]);

    let portable = attend_all(q, k, v, Some(&bias), AttentionImpl::Plain);
    let tol = tolerance(dtype, 1e-4);
    for (what, diff) in [
        ("attention", max_diff(&host(fused), &host(portable))),
        (
            "decode_attention",
            max_diff(&host(direct), &host(reference)),
        ),
    ] {
        assert!(
            diff <= tol,
            "{what} {dtype:?} heads {heads} kv {kv} hd {hd} pos {pos} visible {visible} \
             sliding {sliding:?}: max diff {diff} > {tol}"
        );
    }
}

fn decode_shapes(dtype: DType) {
    // SmolLM2-135M: 9 heads on 3 KV heads (GQA 3), hd 64, in the first decode window.
    check_decode(9, 3, 64, 37, 256, None, 1, dtype);
    // GQA 4, hd 256 (Gemma 3), past a window edge: position 256 and 257 of a 512 window,
    // with a sliding window of 256 that hides the first keys.
    check_decode(8, 2, 256, 256, 512, Some(256), 1, dtype);
    check_decode(8, 2, 256, 257, 512, Some(256), 1, dtype);
    // One KV head (multi-query), the first position, two sequences.
    check_decode(4, 1, 64, 0, 256, None, 2, dtype);
    // No grouping, keys in four chunks of the cube (1000 > 3 x 256).
    check_decode(2, 2, 64, 999, 1000, None, 1, dtype);
}

f32_cases! {
#[test]
fn decode_attention_equals_portable_f32() {
    decode_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn decode_attention_equals_portable_f16() {
    decode_shapes(DType::F16);
}
}

#[test]
fn attention_without_bias_equals_portable() {
    for dtype in [DType::F32, DType::F16] {
        let q = tensor([1, 3, 5, 64], 1, dtype);
        let k = tensor([1, 3, 300, 64], 2, dtype);
        let v = tensor([1, 3, 300, 64], 3, dtype);
        let fused = FusedOps::<B>::attention(&ops(), &q, &k, &v, None)
            .unwrap_or_else(|| panic!("the kernel declined"));
        let portable = attend_all(q, k, v, None, AttentionImpl::Plain);
        let diff = max_diff(&host(fused), &host(portable));
        let tol = tolerance(dtype, 1e-4);
        assert!(diff <= tol, "{dtype:?}: max diff {diff} > {tol}");
    }
}

#[test]
fn declines_what_it_does_not_take() {
    let dtype = DType::F32;
    // A prompt's rows go to burn's flash attention; head_dim above the cube's width.
    let long = tensor([1, 1, 64, 64], 1, dtype);
    assert!(FusedOps::<B>::attention(&ops(), &long, &long, &long, None).is_none());
    let wide = tensor([1, 1, 1, 512], 2, dtype);
    assert!(FusedOps::<B>::attention(&ops(), &wide, &wide, &wide, None).is_none());
    // An empty or too long range of keys.
    let (q, kv) = (
        tensor([1, 2, 1, 64], 5, dtype),
        tensor([1, 1, 10, 64], 6, dtype),
    );
    assert!(FusedOps::<B>::decode_attention(&ops(), &q, &kv, &kv, 3..3).is_none());
    assert!(FusedOps::<B>::decode_attention(&ops(), &q, &kv, &kv, 0..11).is_none());
    // Mixed dtypes: the caller's portable path decides.
    let x = tensor([1, 1, 8], 3, DType::F32);
    let w = tensor([8], 4, DType::F16);
    assert!(FusedOps::<B>::rms_norm(&ops(), &x, &w, 1e-5).is_none());
    assert!(FusedOps::<B>::add_rms_norm(&ops(), &x, &x, &w, 1e-5).is_none());
    // Summands of different shapes.
    let (a, b, w) = (
        tensor([1, 2, 8], 5, dtype),
        tensor([1, 1, 8], 6, dtype),
        tensor([8], 7, dtype),
    );
    assert!(FusedOps::<B>::add_rms_norm(&ops(), &a, &b, &w, 1e-5).is_none());
}

/// RoPE with the cache write ([`FusedOps::rope_write`]) against [`rotate`] and burn's
/// `slice_assign`, for a step of `seq` tokens of each batch row `i` at `rows[i] = (cache row,
/// start)` in a cache of `slots` rows and `n` positions holding earlier values. q, k and v
/// are views of one projection's output, as Llama splits it; with `contiguous`, q and k are
/// their own tensors (Gemma 3's and Qwen3's per-head norms' outputs). `per_row_tables`: each
/// row's tables at its own positions (a server's batched decode), else one table for all.
#[allow(clippy::too_many_arguments)]
fn check_rope_write(
    heads: usize,
    kv: usize,
    hd: usize,
    seq: usize,
    rows: &[(usize, usize)],
    (slots, n): (usize, usize),
    contiguous: bool,
    dtype: DType,
) {
    let batch = rows.len();
    let seed = (heads * 100 + kv * 10 + hd + seq + rows[0].1) as u64;
    let projection = tensor([batch, seq, heads + 2 * kv, hd], seed, dtype);
    let qkv = projection.clone().swap_dims(1, 2);
    let mut q = qkv.clone().narrow(1, 0, heads);
    let mut k = qkv.clone().narrow(1, heads, kv);
    let v = qkv.narrow(1, heads + kv, kv);
    if contiguous {
        q = tensor([batch, heads, seq, hd], seed + 5, dtype);
        k = tensor([batch, kv, seq, hd], seed + 6, dtype);
    }
    let rope = Rope::<B>::new(&inv_freq(hd, 10_000.0, None), n, &device(), dtype);
    let uniform = rows.iter().all(|&(_, s)| s == rows[0].1);
    let tables = if uniform {
        rope.tables(rows[0].1, seq)
    } else {
        assert_eq!(seq, 1, "rows at different positions decode one token each");
        rope.tables_rows(&rows.iter().map(|r| r.1).collect::<Vec<_>>())
    };
    let keys = tensor([slots, kv, n, hd], seed + 1, dtype);
    let values = tensor([slots, kv, n, hd], seed + 2, dtype);

    // The portable path: rotate, then write each row with slice_assign.
    let (q_ref, k_rot) = (rotate(q.clone(), &tables), rotate(k.clone(), &tables));
    let mut keys_ref = keys.clone();
    let mut values_ref = values.clone();
    for (i, &(row, start)) in rows.iter().enumerate() {
        let at = [row..row + 1, 0..kv, start..start + seq, 0..hd];
        keys_ref = keys_ref.slice_assign(at.clone(), k_rot.clone().narrow(0, i, 1));
        values_ref = values_ref.slice_assign(at, v.clone().narrow(0, i, 1));
    }

    // The kernel, once on a cache held elsewhere too (it must copy, and the other holder
    // sees no change) and once on the only handle (written in place).
    let before = (host(keys.clone()), host(values.clone()));
    let shared = (keys.clone(), values.clone());
    let written = FusedOps::<B>::rope_write(
        &ops(),
        &q,
        &k,
        &v,
        tables.cos(),
        tables.sin(),
        shared.clone(),
        rows,
    )
    .unwrap_or_else(|_| panic!("the kernel declined heads {heads} kv {kv} hd {hd} rows {rows:?}"));
    let unchanged = max_diff(&host(shared.0), &before.0).max(max_diff(&host(shared.1), &before.1));
    assert_eq!(unchanged, 0.0, "a shared cache was written in place");
    // The projection before its split into heads (q, k and v are its views), on a copy of
    // the cache (the other holders see no change: checked above for the split form).
    let packed = (!contiguous).then(|| {
        let flat = projection.reshape([batch, seq, (heads + 2 * kv) * hd]);
        let cache = (keys.clone(), values.clone());
        FusedOps::<B>::rope_write_packed(
            &ops(),
            &flat,
            heads,
            tables.cos(),
            tables.sin(),
            cache,
            rows,
        )
        .unwrap_or_else(|_| panic!("the packed kernel declined heads {heads} kv {kv} hd {hd}"))
    });
    let only = FusedOps::<B>::rope_write(
        &ops(),
        &q,
        &k,
        &v,
        tables.cos(),
        tables.sin(),
        (keys, values),
        rows,
    )
    .unwrap_or_else(|_| panic!("the kernel declined heads {heads} kv {kv} hd {hd} rows {rows:?}"));

    let tol = tolerance(dtype, 1e-5);
    let what = format!("{dtype:?} heads {heads} kv {kv} hd {hd} seq {seq} rows {rows:?}");
    for w in [written, only].into_iter().chain(packed) {
        assert_eq!(w.q.dims(), [batch, heads, seq, hd]);
        assert_eq!(w.keys.dims(), [slots, kv, n, hd]);
        let dq = max_diff(&host(w.q), &host(q_ref.clone()));
        let dk = max_diff(&host(w.keys), &host(keys_ref.clone()));
        let dv = max_diff(&host(w.values), &host(values_ref.clone()));
        assert!(dq <= tol && dk <= tol, "{what}: q {dq}, keys {dk} > {tol}");
        assert_eq!(dv, 0.0, "{what}: values differ");
    }
}

fn rope_write_shapes(dtype: DType) {
    // SmolLM2-135M's decode step: 9 heads on 3 KV heads (GQA 3), hd 64.
    check_rope_write(9, 3, 64, 1, &[(0, 37)], (1, 256), false, dtype);
    // Gemma 3's shape (hd 256, GQA 4, normed q and k), at and past a 256-position window's
    // edge, and at the cache's last position.
    for start in [255, 256, 511] {
        check_rope_write(8, 2, 256, 1, &[(0, start)], (1, 512), true, dtype);
    }
    // One KV head, two sequences at the same position (a batch of one prompt's copies).
    check_rope_write(4, 1, 64, 1, &[(0, 5), (1, 5)], (2, 64), false, dtype);
    // A server's slot: row 2 of 3, and a batched decode step, rows at different positions
    // (one past a 256-position block's edge).
    check_rope_write(9, 3, 64, 1, &[(2, 17)], (3, 320), false, dtype);
    check_rope_write(
        8,
        2,
        64,
        1,
        &[(0, 3), (1, 300), (2, 0)],
        (4, 320),
        false,
        dtype,
    );
    // Prefill: 7 tokens from 0, and 5 across the 256 edge.
    check_rope_write(9, 3, 64, 7, &[(0, 0)], (1, 256), false, dtype);
    check_rope_write(4, 4, 256, 5, &[(0, 254)], (1, 300), true, dtype);
}

f32_cases! {
#[test]
fn rope_write_equals_portable_f32() {
    rope_write_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn rope_write_equals_portable_f16() {
    rope_write_shapes(DType::F16);
}
}

#[test]
fn rope_write_packed_declines_what_it_does_not_take() {
    let dtype = DType::F32;
    let rope = Rope::<B>::new(&inv_freq(64, 10_000.0, None), 16, &device(), dtype);
    let tables = rope.tables(3, 1);
    let cache = || {
        (
            tensor([1, 3, 16, 64], 1, dtype),
            tensor([1, 3, 16, 64], 2, dtype),
        )
    };
    // 9 query heads and 3 KV heads of 64 take 960 features: 959 and 1024 are declined,
    // and so is a step past the cache's end; the cache comes back unchanged.
    for (features, rows) in [(959, (0, 3)), (1024, (0, 3)), (960, (0, 16))] {
        let qkv = tensor([1, 1, features], 3, dtype);
        let before = cache();
        let back = FusedOps::<B>::rope_write_packed(
            &ops(),
            &qkv,
            9,
            tables.cos(),
            tables.sin(),
            cache(),
            &[rows],
        )
        .err()
        .unwrap_or_else(|| panic!("{features} features at {rows:?} were taken"));
        assert_eq!(max_diff(&host(back.0), &host(before.0)), 0.0);
    }
    let qkv = tensor([1, 1, 960], 3, dtype);
    let taken = FusedOps::<B>::rope_write_packed(
        &ops(),
        &qkv,
        9,
        tables.cos(),
        tables.sin(),
        cache(),
        &[(0, 3)],
    );
    assert!(
        taken.is_ok(),
        "the same call with 960 features was declined"
    );
}

#[test]
fn rope_write_declines_what_it_does_not_take() {
    let dtype = DType::F32;
    let q = tensor([1, 4, 1, 64], 1, dtype);
    let k = tensor([1, 2, 1, 64], 2, dtype);
    let rope = Rope::<B>::new(&inv_freq(64, 10_000.0, None), 16, &device(), dtype);
    let t = rope.tables(3, 1);
    let cache = || {
        (
            tensor([2, 2, 16, 64], 3, dtype),
            tensor([2, 2, 16, 64], 4, dtype),
        )
    };
    let call = |rows: &[(usize, usize)], k: &Tensor<B, 4>| {
        FusedOps::<B>::rope_write(&ops(), &q, k, k, t.cos(), t.sin(), cache(), rows).is_err()
    };
    // A row outside the cache, a position past its end, a row count unlike the batch's.
    assert!(call(&[(2, 3)], &k));
    assert!(call(&[(0, 16)], &k));
    assert!(call(&[(0, 3), (1, 3)], &k));
    // Keys of another dtype or head_dim.
    assert!(call(&[(0, 3)], &k.clone().cast(DType::F16)));
    assert!(call(&[(0, 3)], &tensor([1, 2, 1, 32], 5, dtype)));
    // And it takes the same call with a row inside.
    assert!(!call(&[(1, 3)], &k));
}

/// Largest difference relative to the reference where it is above 1 (absolute below);
/// panics on a NaN or a length mismatch.
fn max_rel_diff(a: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(a.len(), reference.len());
    a.iter().zip(reference).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs() / y.abs().max(1.0);
        assert!(!d.is_nan(), "NaN: {x} vs {y}");
        m.max(d)
    })
}

/// [`FusedOps::gated`] against [`gated`]'s burn ops, for both activations: in the tensors'
/// dtype, and (what a wide range is checked against) in f32 from the same inputs, rounded
/// once to the dtype. In f16 the burn ops round after each op, and tanh-GELU's `1 + tanh(u)`
/// cancels for gates below -2: a 2^-11 error of tanh is 4 % of the result at -2.5, which
/// times an up value of 80 exceeds any absolute tolerance; the kernel computes in f32.
fn check_gated(gate_up: Tensor<B, 3>, dtype: DType, wide: bool) {
    let [batch, seq, features] = gate_up.dims();
    for act in [Gate::Silu, Gate::GeluTanh] {
        let fused = FusedOps::<B>::gated(&ops(), &gate_up, act)
            .unwrap_or_else(|| panic!("the kernel declined {:?} {dtype:?}", gate_up.dims()));
        assert_eq!(fused.dims(), [batch, seq, features / 2]);
        assert_eq!(fused.dtype(), dtype);
        let fused = host(fused);
        let wide_ref = gated(gate_up.clone().cast(DType::F32), act, None).cast(dtype);
        let mut diffs = vec![("f32, rounded once", max_rel_diff(&fused, &host(wide_ref)))];
        if !wide {
            let portable = gated(gate_up.clone(), act, None);
            diffs.push(("the dtype", max_rel_diff(&fused, &host(portable))));
        }
        let tol = tolerance(dtype, 1e-5);
        for (what, diff) in diffs {
            assert!(
                diff <= tol,
                "{act:?} {dtype:?} {:?} against burn's ops in {what}: max diff {diff} > {tol}",
                gate_up.dims()
            );
        }
    }
}

fn gated_shapes(dtype: DType) {
    // 2 x 1536: SmolLM2's gate_up; 2 x 6912: Gemma 3 1B's; 2 x 100 and 2 x 300: not
    // multiples of a vector width or of the cube; a prompt's rows and two sequences.
    for (i, shape) in [[1, 1, 3072], [1, 1, 13824], [2, 5, 200], [1, 7, 600]]
        .into_iter()
        .enumerate()
    {
        check_gated(tensor(shape, 70 + i as u64, dtype), dtype, false);
    }
    // A strided view: the last position of a prompt's rows, its features an inner range (a
    // row stride that is not the feature count, an offset).
    let x = tensor([1, 6, 2 * 96 + 6], 80, dtype)
        .narrow(1, 5, 1)
        .narrow(2, 3, 2 * 96);
    check_gated(x, dtype, false);
    // Wide values (gates of magnitude 100: SiLU's and GELU's exponential overflows f32 on
    // the negative side, which must give 0, not a NaN); f16 holds them too (up to 60000).
    let wide = tensor([1, 2, 2 * 64], 81, dtype).mul_scalar(50.0);
    check_gated(wide, dtype, true);
}

f32_cases! {
#[test]
fn gated_equals_portable_f32() {
    gated_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn gated_equals_portable_f16() {
    gated_shapes(DType::F16);
}
}

#[test]
fn gated_declines_what_it_does_not_take() {
    // An odd number of features has no halves; no rows.
    let odd = tensor([1, 1, 7], 1, DType::F32);
    assert!(FusedOps::<B>::gated(&ops(), &odd, Gate::Silu).is_none());
    let empty = tensor([1, 0, 8], 2, DType::F32);
    assert!(FusedOps::<B>::gated(&ops(), &empty, Gate::Silu).is_none());
}

/// [`FusedOps::gated_linear`] (the decode matrix-vector kernel with the gated activation as
/// its prologue) against [`gated_linear`]'s burn ops (the activation, then a matmul), for
/// both activations, run in f32 from the same inputs with the activation rounded to the
/// dtype (as both paths round it): relative to outputs above 1, f32 1e-5, f16 1e-2 (one
/// rounding of an f32 sum, a few f16 ulps where an activation's rounding differs). In f16,
/// burn's ops on the dtype itself are also compared, and the kernel must be at least as
/// close to the f32 reference as they are (their matmul rounds partial sums to f16).
fn check_gated_linear(gate_up: Tensor<B, 3>, w: Tensor<B, 2>, dtype: DType) {
    let [batch, seq, _] = gate_up.dims();
    let [_, outputs] = w.dims();
    for act in [Gate::Silu, Gate::GeluTanh] {
        let fused = FusedOps::<B>::gated_linear(&ops(), &gate_up, act, &w).unwrap_or_else(|| {
            panic!(
                "the kernel declined {:?} {:?} {dtype:?}",
                gate_up.dims(),
                w.dims()
            )
        });
        assert_eq!(fused.dims(), [batch, seq, outputs]);
        assert_eq!(fused.dtype(), dtype);
        let fused = host(fused);
        let acts = gated(gate_up.clone().cast(DType::F32), act, None)
            .cast(dtype)
            .cast(DType::F32);
        let reference = host(linear(acts, &w.clone().cast(DType::F32)).cast(dtype));
        let what = format!("{act:?} {dtype:?} {:?} x {:?}", gate_up.dims(), w.dims());
        let diff = max_rel_diff(&fused, &reference);
        let tol = tolerance(dtype, 1e-5);
        assert!(diff <= tol, "{what}: max diff {diff} > {tol}");
        if dtype != DType::F32 {
            let portable = gated_linear(gate_up.clone(), act, &Weight::Dense(w.clone()), None);
            let burn = max_rel_diff(&host(portable), &reference);
            assert!(
                diff <= burn.max(2e-3),
                "{what}: the kernel is {diff} from the f32 reference, burn's ops {burn}"
            );
        }
    }
}

fn gated_linear_shapes(dtype: DType) {
    // SmolLM2's down projection (1536 -> 576: six chunks of the cube; Gemma 3 1B's 6912 ->
    // 1152 is left out for the time lavapipe takes); sizes that are not multiples of the
    // cube or of the 64 columns of a cube (300 -> 100, 96 -> 130); two rows (a batch of two
    // sequences) and four (the most it takes).
    for (i, (rows, inter, outputs)) in [
        ([1, 1], 1536, 576),
        ([1, 1], 300, 100),
        ([2, 1], 96, 130),
        ([1, 4], 257, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 90 + 2 * i as u64;
        let gate_up = tensor([rows[0], rows[1], 2 * inter], seed, dtype);
        // Weights of a trained model's scale (outputs of order 1).
        let w = tensor([inter, outputs], seed + 1, dtype).div_scalar((inter as f32).sqrt());
        check_gated_linear(gate_up, w, dtype);
    }
    // A transposed weight (a strided view), and a gate_up that is a view.
    let w = tensor([100, 300], 110, dtype).div_scalar(10.0).transpose();
    let gate_up = tensor([1, 3, 2 * 300], 111, dtype).narrow(1, 2, 1);
    check_gated_linear(gate_up, w, dtype);
}

f32_cases! {
#[test]
fn gated_linear_equals_portable_f32() {
    gated_linear_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn gated_linear_equals_portable_f16() {
    gated_linear_shapes(DType::F16);
}
}

#[test]
fn gated_linear_declines_what_it_does_not_take() {
    let dtype = DType::F32;
    let w = tensor([8, 4], 1, dtype);
    // A prompt's rows (burn's matmul), features unlike the weight's rows, mixed dtypes.
    let prompt = tensor([1, 5, 16], 2, dtype);
    assert!(FusedOps::<B>::gated_linear(&ops(), &prompt, Gate::Silu, &w).is_none());
    let other = tensor([1, 1, 18], 3, dtype);
    assert!(FusedOps::<B>::gated_linear(&ops(), &other, Gate::Silu, &w).is_none());
    let half = tensor([1, 1, 16], 4, DType::F16);
    assert!(FusedOps::<B>::gated_linear(&ops(), &half, Gate::Silu, &w).is_none());
    // And it takes the same call with one row.
    let one = tensor([1, 1, 16], 5, dtype);
    assert!(FusedOps::<B>::gated_linear(&ops(), &one, Gate::Silu, &w).is_some());
}

fn check_linear(x: Tensor<B, 3>, w: Tensor<B, 2>, dtype: DType) {
    let [batch, seq, _] = x.dims();
    let [_, outputs] = w.dims();
    let what = format!("{dtype:?} {:?} x {:?}", x.dims(), w.dims());
    let fused = FusedOps::<B>::linear(&ops(), &x, &w)
        .unwrap_or_else(|| panic!("the kernel declined {what}"));
    assert_eq!(fused.dims(), [batch, seq, outputs]);
    assert_eq!(fused.dtype(), dtype);
    let fused = host(fused);
    let reference =
        host(linear(x.clone().cast(DType::F32), &w.clone().cast(DType::F32)).cast(dtype));
    let diff = max_rel_diff(&fused, &reference);
    let tol = tolerance(dtype, 1e-5);
    assert!(diff <= tol, "{what}: max diff {diff} > {tol}");
    if dtype != DType::F32 {
        let burn = max_rel_diff(&host(linear(x, &w)), &reference);
        assert!(
            diff <= burn.max(2e-3),
            "{what}: the kernel is {diff} from the f32 reference, burn's matmul {burn}"
        );
    }
}

fn linear_shapes(dtype: DType) {
    // SmolLM2-135M's q, k and v side by side (576 -> 960), its MLP's gate and up (576 ->
    // 3072); outputs that are not a multiple of the kernel's 4-column vectors (6, 130: the
    // scalar form) or of a cube's 16 columns (100); two rows and four (the most it takes).
    for (i, (rows, inputs, outputs)) in [
        ([1, 1], 576, 960),
        ([1, 1], 576, 3072),
        ([1, 1], 33, 6),
        ([2, 1], 96, 130),
        ([1, 4], 257, 100),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 130 + 2 * i as u64;
        let x = tensor([rows[0], rows[1], inputs], seed, dtype);
        let w = tensor([inputs, outputs], seed + 1, dtype).div_scalar((inputs as f32).sqrt());
        check_linear(x, w, dtype);
    }
    // A transposed weight (a strided view: copied before the kernel reads it as vectors),
    // and an input that is a view.
    let w = tensor([100, 300], 150, dtype).div_scalar(10.0).transpose();
    let x = tensor([1, 3, 300], 151, dtype).narrow(1, 2, 1);
    check_linear(x, w, dtype);
    // Rows further apart than their width (as burn-cubecl pads a 2D tensor's rows on a GPU:
    // read in place), and rows whose distance is not a whole number of vectors (copied).
    for (pitch, seed) in [(584, 152), (578, 154)] {
        let w = tensor([64, pitch], seed, dtype)
            .div_scalar(8.0)
            .narrow(1, 0, 576);
        check_linear(tensor([1, 1, 64], seed + 1, dtype), w, dtype);
    }
}

f32_cases! {
#[test]
fn linear_equals_portable_f32() {
    linear_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn linear_equals_portable_f16() {
    linear_shapes(DType::F16);
}
}

#[test]
fn linear_declines_what_it_does_not_take() {
    let dtype = DType::F32;
    let w = tensor([8, 4], 1, dtype);
    // A prompt's rows (burn's matmul), features unlike the weight's rows, mixed dtypes.
    assert!(FusedOps::<B>::linear(&ops(), &tensor([1, 5, 8], 2, dtype), &w).is_none());
    assert!(FusedOps::<B>::linear(&ops(), &tensor([1, 1, 9], 3, dtype), &w).is_none());
    assert!(FusedOps::<B>::linear(&ops(), &tensor([1, 1, 8], 4, DType::F16), &w).is_none());
    assert!(FusedOps::<B>::linear(&ops(), &tensor([1, 1, 8], 5, dtype), &w).is_some());
}

fn check_add_rms_norm_linear(x: Tensor<B, 3>, outputs: usize, dtype: DType, seed: u64) {
    let dims = x.dims();
    let y = tensor(dims, seed, dtype);
    let weight = tensor([dims[2]], seed + 1, dtype);
    let w = tensor([dims[2], outputs], seed + 2, dtype).div_scalar((dims[2] as f32).sqrt());
    let what = format!("{dtype:?} {dims:?} x {outputs}");
    let (sum, out) = FusedOps::<B>::add_rms_norm_linear(&ops(), &x, &y, &weight, 1e-5, &w)
        .unwrap_or_else(|| panic!("the kernel declined {what}"));
    assert_eq!(
        (sum.dims(), out.dims()),
        (dims, [dims[0], dims[1], outputs])
    );
    assert_eq!((sum.dtype(), out.dtype()), (dtype, dtype));
    // The sum is one rounding of the exact sum on both paths.
    let sum_ref = x.add(y);
    assert_eq!(
        max_diff(&host(sum), &host(sum_ref.clone())),
        0.0,
        "{what}: the sums differ"
    );
    // The normed rows rounded to the dtype (as the two ops hand them over), then the product
    // in f32.
    let normed = rms_norm(
        sum_ref.clone().cast(DType::F32),
        &weight.clone().cast(DType::F32),
        1e-5,
    )
    .cast(dtype);
    let reference =
        host(linear(normed.clone().cast(DType::F32), &w.clone().cast(DType::F32)).cast(dtype));
    let fused = host(out);
    let diff = max_rel_diff(&fused, &reference);
    let tol = tolerance(dtype, 1e-5);
    assert!(diff <= tol, "{what}: max diff {diff} > {tol}");
    if dtype != DType::F32 {
        let burn = max_rel_diff(
            &host(linear(rms_norm(sum_ref, &weight, 1e-5), &w)),
            &reference,
        );
        assert!(
            diff <= burn.max(2e-3),
            "{what}: the kernel is {diff} from the f32 reference, burn's ops {burn}"
        );
    }
}

fn add_rms_norm_linear_shapes(dtype: DType) {
    // SmolLM2-135M's qkv (576 -> 960) and gate_up (576 -> 3072), the most features the
    // kernel holds (2048, SmolLM2-1.7B's hidden size), sizes that are not multiples of the
    // cube or of the vectors (100 -> 6, 300 -> 130), two and four rows, and a strided x.
    for (i, (rows, hidden, outputs)) in [
        ([1, 1], 576, 960),
        ([1, 1], 576, 3072),
        ([1, 1], 2048, 64),
        ([2, 1], 100, 6),
        ([1, 4], 300, 130),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 170 + 3 * i as u64;
        check_add_rms_norm_linear(
            tensor([rows[0], rows[1], hidden], seed, dtype),
            outputs,
            dtype,
            seed + 1,
        );
    }
    let x = tensor([1, 3, 576], 190, dtype).narrow(1, 1, 1);
    check_add_rms_norm_linear(x, 960, dtype, 191);
}

f32_cases! {
#[test]
fn add_rms_norm_linear_equals_portable_f32() {
    add_rms_norm_linear_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn add_rms_norm_linear_equals_portable_f16() {
    add_rms_norm_linear_shapes(DType::F16);
}
}

#[test]
fn add_rms_norm_linear_declines_what_it_does_not_take() {
    let dtype = DType::F32;
    let take = |x: Tensor<B, 3>, w: Tensor<B, 2>| {
        let hidden = x.dims()[2];
        let y = x.clone();
        let weight = tensor([hidden], 1, dtype);
        FusedOps::<B>::add_rms_norm_linear(&ops(), &x, &y, &weight, 1e-5, &w).is_some()
    };
    // A prompt's rows, more features than the kernel holds, features unlike w's rows.
    assert!(!take(tensor([1, 5, 8], 2, dtype), tensor([8, 4], 3, dtype)));
    assert!(!take(
        tensor([1, 1, 2049], 4, dtype),
        tensor([2049, 4], 5, dtype)
    ));
    assert!(!take(tensor([1, 1, 8], 6, dtype), tensor([9, 4], 7, dtype)));
    assert!(take(tensor([1, 1, 8], 8, dtype), tensor([8, 4], 9, dtype)));
}

/// A `[rows, cols]` weight as `Unpacked` groups: integers of `bits` bits, scales of 16 /
/// 2^bits times [0.005, 0.025) (weights within about +-0.2, as a model's), offsets of minus
/// 2^(bits-1) steps give or take a bit (as Q8_0/Q4_0's and Q4_1/K-quants' do).
fn unpacked(rows: usize, cols: usize, bits: u32, group: usize, seed: u64) -> Unpacked {
    let n = rows * cols;
    let groups = n / group;
    let r = values(n + 2 * groups, seed);
    let top = (1u32 << bits) as f32;
    let u = r[..n]
        .iter()
        .map(|v| (((v + 2.0) / 4.0) * top).min(top - 1.0) as u8)
        .collect();
    let scale: Vec<f32> = r[n..n + groups]
        .iter()
        .map(|v| (0.015 + v / 200.0) * 16.0 / top)
        .collect();
    let min = scale
        .iter()
        .zip(&r[n + groups..])
        .map(|(s, v)| -s * (top / 2.0 + v))
        .collect();
    Unpacked {
        bits,
        group,
        u,
        scale,
        min,
    }
}

fn native(q: &Unpacked, shape: [usize; 2], dtype: DType) -> Native<B> {
    FusedOps::<B>::quantized(
        &ops(),
        &QuantizedRows::whole(q.clone(), shape),
        &device(),
        dtype,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|| panic!("the kernels declined {shape:?} of {} bits", q.bits))
}

/// The weight dequantized on the host, `[rows, cols]`, in f32.
fn dense(q: &Unpacked, [rows, cols]: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(q.values(), [rows, cols]),
        (&device(), DType::F32),
    )
}

/// Kept-quantized weights of each GGUF integer width (Q2_K's 2 bits and Q4's 4 in nibbles;
/// Q5's 5, Q6_K's 6 and Q8_0's 8 in bytes; groups of 16 and 32): products of 1, 3 and 4
/// rows (the matrix-vector kernel) and of 7 (a prompt: dequantized, then burn's matmul)
/// against the host-dequantized weight's f32 product, looked-up rows (one id past the last
/// row: zeros) against the host's values, and q, k and v stacked. The matrix-vector kernel
/// stages rows of up to [`ember_cubecl::STAGE_BYTES`] of activations in shared memory: the
/// second-to-last shape's row fills the stage (its last padded slot is read), the last one's
/// is longer, so its product reads the activations from `x`.
fn quantized_shapes(dtype: DType) {
    let staged = ember_cubecl::STAGE_BYTES / dtype.size();
    let unstaged = staged + 32;
    for (i, (bits, group, rows, cols)) in [
        (8, 32, 37, 576),
        (4, 32, 40, 64),
        (2, 16, 9, 96),
        (5, 32, 17, 160),
        (6, 16, 8, 48),
        (8, 32, 3, staged),
        (4, 32, 5, unstaged),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 300 + 10 * i as u64;
        let q = unpacked(rows, cols, bits, group, seed);
        let w = native(&q, [rows, cols], dtype);
        assert_eq!(w.0.shape(), [rows, cols]);
        assert_eq!(w.0.dtype(), dtype);
        let reference = dense(&q, [rows, cols]);
        let what = format!("{dtype:?} {bits} bits, groups of {group}, {rows}x{cols}");
        for n in [1, 3, 4, 7] {
            let x = tensor([n, cols], seed + n as u64, dtype);
            let want = host(
                x.clone()
                    .cast(DType::F32)
                    .matmul(reference.clone().transpose()),
            );
            let got = w.0.forward(x);
            assert_eq!(got.dims(), [n, rows], "{what}");
            assert_eq!(got.dtype(), dtype, "{what}");
            let diff = max_rel_diff(&host(got), &want);
            // Rows past 1024 features: f32 sums of thousands of products in another order
            // (measured 1.03e-5 over 4096), as attention's 1e-4.
            let tol = tolerance(dtype, if cols > 1024 { 1e-4 } else { 1e-5 });
            assert!(diff <= tol, "{what}, {n} rows: max diff {diff} > {tol}");
        }
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![2i32, 0, rows as i32, rows as i32 - 1], [4]),
            &device(),
        );
        let got = host(w.0.rows(ids));
        let mut want = Vec::new();
        for id in [2, 0, rows, rows - 1] {
            match q.values().get(id * cols..(id + 1) * cols) {
                Some(row) => want.extend_from_slice(row),
                None => want.extend(std::iter::repeat_n(0.0, cols)),
            }
        }
        // The kernel may fuse `scale * u + min` into one multiply-add; f16 rounds once.
        let diff = max_diff(&got, &want);
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-3 };
        assert!(diff <= tol, "{what}: rows differ by {diff}");
        let past = &got[2 * cols..3 * cols];
        assert!(
            past.iter().all(|&v| v == 0.0),
            "{what}: an id past the rows"
        );
    }
    // The prologues: add + RMSNorm (the sum equal to the add's exactly) and the gated
    // activation, against burn's ops and the host-dequantized product.
    for (bits, seed) in [(8u32, 350u64), (4, 360)] {
        let (rows, cols) = (24, 96);
        let q = unpacked(rows, cols, bits, 32, seed);
        let w = native(&q, [rows, cols], dtype);
        let reference = dense(&q, [rows, cols]);
        let tol = tolerance(dtype, 1e-5);
        let n = 3;
        let x = tensor([n, cols], seed + 1, dtype);
        let y = tensor([n, cols], seed + 2, dtype);
        let weight = tensor([cols], seed + 3, dtype);
        let (sum, out) =
            w.0.add_rms_norm_forward(&x, &y, &weight, 1e-5)
                .unwrap_or_else(|| panic!("{bits} bits: the norm prologue declined"));
        let want_sum = x.clone().add(y.clone());
        assert_eq!(
            host(sum),
            host(want_sum.clone()),
            "{dtype:?} {bits} bits: sum"
        );
        let normed = rms_norm(want_sum.reshape([1, n, cols]), &weight, 1e-5).reshape([n, cols]);
        let want = host(
            normed
                .cast(DType::F32)
                .matmul(reference.clone().transpose()),
        );
        let diff = max_rel_diff(&host(out), &want);
        assert!(diff <= tol, "{dtype:?} {bits} bits, norm prologue: {diff}");
        let gate_up = tensor([n, 2 * cols], seed + 4, dtype);
        for act in [Gate::Silu, Gate::GeluTanh] {
            let got =
                w.0.gated_forward(&gate_up, act)
                    .unwrap_or_else(|| panic!("{bits} bits: the gated prologue declined"));
            let h = gated(gate_up.clone().reshape([1, n, 2 * cols]), act, None).reshape([n, cols]);
            let want = host(h.cast(DType::F32).matmul(reference.clone().transpose()));
            let diff = max_rel_diff(&host(got), &want);
            assert!(
                diff <= tol,
                "{dtype:?} {bits} bits, {act:?} prologue: {diff}"
            );
        }
    }
    // q, k and v stacked into one weight.
    let parts: Vec<Unpacked> = (0..3).map(|i| unpacked(16, 64, 4, 32, 400 + i)).collect();
    let natives: Vec<Native<B>> = parts.iter().map(|q| native(q, [16, 64], dtype)).collect();
    let stacked = natives[0]
        .0
        .stack(&[&natives[1], &natives[2]])
        .unwrap_or_else(|| panic!("q, k and v did not stack"));
    assert_eq!(stacked.0.shape(), [48, 64]);
    let x = tensor([1, 64], 410, DType::F32);
    let want: Vec<f32> = Tensor::cat(
        parts
            .iter()
            .map(|q| x.clone().matmul(dense(q, [16, 64]).transpose()))
            .collect(),
        1,
    )
    .into_data()
    .to_vec()
    .unwrap_or_else(|e| panic!("{e:?}"));
    let diff = max_rel_diff(&host(stacked.0.forward(x.cast(dtype))), &want);
    assert!(diff <= tolerance(dtype, 1e-5), "stacked: {diff}");
}

f32_cases! {
#[test]
fn quantized_equals_dequantized_f32() {
    quantized_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn quantized_equals_dequantized_f16() {
    quantized_shapes(DType::F16);
}
}

#[test]
fn quantized_declines_what_it_does_not_take() {
    // Rows that are not whole vectors of four words (40 bytes), groups that split a word.
    for (bits, group, cols) in [(8, 8, 40), (4, 4, 64)] {
        let q = unpacked(4, cols, bits, group, 500);
        let kept = FusedOps::<B>::quantized(
            &ops(),
            &QuantizedRows::whole(q, [4, cols]),
            &device(),
            DType::F32,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            kept.is_none(),
            "{bits} bits, groups of {group}, {cols} columns"
        );
    }
}

/// RoPE, the cache write and attention of one decode step as one op, against burn's ops:
/// rotate, `slice_assign` into the cache, attention over the row's positions `0..=start`.
fn check_rope_attend(
    (heads, kv, hd): (usize, usize, usize),
    rows: &[(usize, usize)],
    (slots, n): (usize, usize),
    dtype: DType,
) {
    let (batch, start, groups) = (rows.len(), rows[0].1, heads / kv);
    let seed = (heads * 100 + kv * 10 + hd + start) as u64;
    let projection = tensor([batch, 1, heads + 2 * kv, hd], seed, dtype);
    let split = projection.clone().swap_dims(1, 2);
    let q = split.clone().narrow(1, 0, heads);
    let k = split.clone().narrow(1, heads, kv);
    let v = split.narrow(1, heads + kv, kv);
    let rope = Rope::<B>::new(&inv_freq(hd, 10_000.0, None), n, &device(), dtype);
    let tables = rope.tables(start, 1);
    let keys = tensor([slots, kv, n, hd], seed + 1, dtype);
    let values = tensor([slots, kv, n, hd], seed + 2, dtype);

    let (q_rot, k_rot) = (rotate(q, &tables), rotate(k, &tables));
    let (mut keys_ref, mut values_ref) = (keys.clone(), values.clone());
    for (i, &(row, start)) in rows.iter().enumerate() {
        let at = [row..row + 1, 0..kv, start..start + 1, 0..hd];
        keys_ref = keys_ref.slice_assign(at.clone(), k_rot.clone().narrow(0, i, 1));
        values_ref = values_ref.slice_assign(at, v.clone().narrow(0, i, 1));
    }
    let out_ref = Tensor::cat(
        rows.iter()
            .enumerate()
            .map(|(i, &(row, start))| {
                let seen = [row..row + 1, 0..kv, 0..start + 1, 0..hd];
                let q = q_rot.clone().narrow(0, i, 1).reshape([1, kv, groups, hd]);
                let (k, v) = (
                    keys_ref.clone().slice(seen.clone()),
                    values_ref.clone().slice(seen),
                );
                attend_all(q, k, v, None, AttentionImpl::Plain).reshape([1, 1, heads * hd])
            })
            .collect(),
        0,
    );

    let flat = projection.reshape([batch, 1, (heads + 2 * kv) * hd]);
    let what = format!("{dtype:?} heads {heads} kv {kv} hd {hd} rows {rows:?}");
    let (out, (keys_out, values_out)) = FusedOps::<B>::rope_write_attend(
        &ops(),
        &flat,
        heads,
        tables.cos(),
        tables.sin(),
        (keys, values),
        rows,
        0..start + 1,
    )
    .unwrap_or_else(|_| panic!("the kernel declined {what}"));
    assert_eq!(out.dims(), [batch, 1, heads * hd]);
    let d_out = max_diff(&host(out), &host(out_ref));
    let d_keys = max_diff(&host(keys_out), &host(keys_ref));
    let d_values = max_diff(&host(values_out), &host(values_ref));
    let (tol, tol_rope) = (tolerance(dtype, 1e-4), tolerance(dtype, 1e-5));
    assert!(d_out <= tol, "{what}: attention max diff {d_out} > {tol}");
    assert!(
        d_keys <= tol_rope,
        "{what}: keys max diff {d_keys} > {tol_rope}"
    );
    assert_eq!(d_values, 0.0, "{what}: values differ");
}

fn rope_attend_shapes(dtype: DType) {
    // SmolLM2-135M (9 heads on 3 KV heads, hd 64); the first position; hd 256 with keys in
    // two chunks of the cube (GQA 4); one KV head and two sequences; a server's slot (row 2
    // of 3).
    check_rope_attend((9, 3, 64), &[(0, 37)], (1, 256), dtype);
    check_rope_attend((9, 3, 64), &[(0, 0)], (1, 256), dtype);
    check_rope_attend((8, 2, 256), &[(0, 300)], (1, 512), dtype);
    check_rope_attend((4, 1, 64), &[(0, 5), (1, 5)], (2, 64), dtype);
    check_rope_attend((9, 3, 64), &[(2, 17)], (3, 320), dtype);
}

f32_cases! {
#[test]
fn rope_write_attend_equals_portable_f32() {
    rope_attend_shapes(DType::F32);
}
}

f16_cases! {
#[test]
fn rope_write_attend_equals_portable_f16() {
    rope_attend_shapes(DType::F16);
}
}

#[test]
fn rope_write_attend_declines_what_it_does_not_take() {
    let dtype = DType::F32;
    let rope = Rope::<B>::new(&inv_freq(64, 10_000.0, None), 16, &device(), dtype);
    let cache = || {
        (
            tensor([2, 3, 16, 64], 1, dtype),
            tensor([2, 3, 16, 64], 2, dtype),
        )
    };
    let call = |qkv: Tensor<B, 3>,
                tables: &ember::nn::rope::RopeTables<B>,
                rows: &[(usize, usize)],
                keys| {
        FusedOps::<B>::rope_write_attend(
            &ops(),
            &qkv,
            9,
            tables.cos(),
            tables.sin(),
            cache(),
            rows,
            keys,
        )
        .is_ok()
    };
    let one = rope.tables(3, 1);
    // Rows at different positions, keys that do not end at the step's position, a prompt's
    // two tokens; and it takes the same step with the right range.
    let two_rows = rope.tables_rows(&[3, 4]);
    assert!(!call(
        tensor([2, 1, 960], 3, dtype),
        &two_rows,
        &[(0, 3), (1, 4)],
        0..5
    ));
    assert!(!call(tensor([1, 1, 960], 4, dtype), &one, &[(0, 3)], 0..5));
    assert!(!call(
        tensor([1, 2, 960], 5, dtype),
        &rope.tables(3, 2),
        &[(0, 3)],
        0..5
    ));
    assert!(call(tensor([1, 1, 960], 6, dtype), &one, &[(0, 3)], 0..4));
}
