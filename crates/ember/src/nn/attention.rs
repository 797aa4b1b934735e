//! Scaled dot-product attention with grouped-query heads: burn's fused op, or the plain
//! matmul-softmax reference it is tested against.

use burn::prelude::*;
use burn::tensor::module::attention as fused_attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::AttentionImpl;
use crate::nn::{scaled_softmax, FusedOps};

/// Repeats each of `kv_heads` heads `groups` times: `[b, kv, s, d]` -> `[b, kv * groups, s, d]`.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv_heads, seq, dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, groups, seq, dim])
        .reshape([batch, kv_heads * groups, seq, dim])
}

/// Causal attention of `q: [batch, heads, q_len, d]` over `k, v: [batch, kv_heads, k_len,
/// d]`, where the queries are the last `q_len` of the `k_len` positions; `heads` is a
/// multiple of `kv_heads` (grouped-query attention: query head `h` reads KV head
/// `h / (heads / kv_heads)`, as [`repeat_kv`] orders them).
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    imp: AttentionImpl,
) -> Tensor<B, 4> {
    causal_attention_with(q, k, v, imp, None)
}

/// [`causal_attention`], a square prefill through `fused`'s
/// ([`FusedOps::causal_attention`]) where it has one and `imp` is
/// [`AttentionImpl::Fused`]: K and V as they are (fewer heads than q for grouped-query
/// attention: flex's kernel reads them so, change 30); repeated to q's heads for the hook
/// again and for burn's ops otherwise.
pub fn causal_attention_with<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    imp: AttentionImpl,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, _] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let square = imp == AttentionImpl::Fused && q_len == k_len && q_len > 1;
    if square && kv_heads < heads {
        if let Some(out) = fused.and_then(|f| f.causal_attention(&q, &k, &v)) {
            return out;
        }
    }
    let groups = heads / kv_heads.max(1);
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    if q_len == 1 {
        return attend_all(q, k, v, None, imp);
    }
    if square {
        if let Some(out) = fused.and_then(|f| f.causal_attention(&q, &k, &v)) {
            return out;
        }
    }
    let device = q.device();
    let mask = || causal_mask::<B>(batch, heads, q_len, k_len, &device);
    match imp {
        AttentionImpl::Fused => {
            // burn's backends disagree on how `is_causal` aligns when q_len < k_len, so it is
            // used only for a full square prefill (a single new token, above, needs no mask).
            // Queries appended to a cache get an additive bias rather than a boolean mask:
            // burn-tch 0.21 hands burn's mask (true = hidden) to PyTorch, which reads true =
            // visible.
            let (bias, is_causal) = if q_len == k_len {
                (None, true)
            } else {
                (Some(hiding_bias(mask(), q.dtype())), false)
            };
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal,
            };
            fused_attention(q, k, v, None, bias, options)
        }
        AttentionImpl::Plain => {
            let bias = hiding_bias(mask(), q.dtype());
            attend_all(q, k, v, Some(&bias), imp)
        }
    }
}

/// [`attend_all`], through the backend's fused attention ([`FusedOps::attention`]) where it
/// has one and `imp` is [`AttentionImpl::Fused`]. burn-tch 0.21's attention op decomposes
/// into ~9 libtorch ops whenever a bias is given; libtorch's own one takes it as one kernel.
pub fn attend_all_with<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    imp: AttentionImpl,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 4> {
    if imp == AttentionImpl::Fused {
        if let Some(out) = fused.and_then(|f| f.attention(&q, &k, &v, bias)) {
            return out;
        }
    }
    attend_all(q, k, v, bias, imp)
}

/// Attention of every query in `q: [batch, heads, q_len, d]` to every key of
/// `k, v: [batch, heads, k_len, d]` but those `bias` (additive, broadcastable to
/// `[batch, heads, q_len, k_len]`) hides. Decode uses it with the query heads of one token
/// grouped onto their KV head (`q_len` = query heads per KV head), so that grouped-query
/// attention needs no repeated K and V.
pub fn attend_all<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    imp: AttentionImpl,
) -> Tensor<B, 4> {
    match imp {
        AttentionImpl::Fused => {
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: false,
            };
            fused_attention(q, k, v, None, bias.cloned(), options)
        }
        AttentionImpl::Plain => {
            let scale = (q.dims()[3] as f64).powf(-0.5);
            let scores = q.matmul(k.swap_dims(2, 3));
            scaled_softmax(scores, scale, bias).matmul(v)
        }
    }
}

/// The additive bias `[batch, heads, queries, window]` that hides keys `visible..window`:
/// 0 before `visible`, `-inf` from it on. Built once per decode step and shared by every
/// layer.
pub fn padding_bias<B: Backend>(
    [batch, heads, queries]: [usize; 3],
    visible: usize,
    window: usize,
    dtype: burn::tensor::DType,
    device: &B::Device,
) -> Tensor<B, 4> {
    let hidden =
        Tensor::<B, 1, Int>::arange(0..window as i64, device).greater_equal_elem(visible as i64);
    window_bias([batch, heads, queries], hidden, dtype)
}

/// The bias `[batch, heads, queries, window]` hiding the keys where `hidden: [window]` is true.
fn window_bias<B: Backend>(
    [batch, heads, queries]: [usize; 3],
    hidden: Tensor<B, 1, Bool>,
    dtype: burn::tensor::DType,
) -> Tensor<B, 4> {
    let window = hidden.dims()[0];
    let hidden = hidden
        .reshape([1, 1, 1, window])
        .expand([batch, heads, queries, window]);
    hiding_bias(hidden, dtype)
}

/// The additive bias `[1, 1, q_len, k_len]` for queries at positions `start..start + q_len`
/// over keys at positions `0..k_len`: a query sees the keys at or before its position and,
/// with `sliding = Some(w)`, only the last `w` of them (itself included), as Gemma's and
/// Mistral's sliding-window layers do (`q - k < w`, transformers' and llama.cpp's rule).
pub fn position_bias<B: Backend>(
    start: usize,
    q_len: usize,
    k_len: usize,
    sliding: Option<usize>,
    dtype: burn::tensor::DType,
    device: &B::Device,
) -> Tensor<B, 4> {
    let rows = Tensor::<B, 1, Int>::arange(start as i64..(start + q_len) as i64, device)
        .reshape([q_len, 1])
        .expand([q_len, k_len]);
    let cols = Tensor::<B, 1, Int>::arange(0..k_len as i64, device)
        .reshape([1, k_len])
        .expand([q_len, k_len]);
    // How far behind the query each key is: negative for keys after it.
    let behind = rows.sub(cols);
    let mut bias = Tensor::<B, 2>::zeros([q_len, k_len], (device, dtype))
        .mask_fill(behind.clone().lower_elem(0), f32::NEG_INFINITY);
    if let Some(window) = sliding {
        bias = bias.mask_fill(behind.greater_equal_elem(window as i64), f32::NEG_INFINITY);
    }
    bias.reshape([1, 1, q_len, k_len])
}

/// An additive bias from a boolean mask: 0 where visible, `-inf` where `hidden` is true.
fn hiding_bias<B: Backend>(hidden: Tensor<B, 4, Bool>, dtype: burn::tensor::DType) -> Tensor<B, 4> {
    Tensor::<B, 4>::zeros(hidden.dims(), (&hidden.device(), dtype))
        .mask_fill(hidden, f32::NEG_INFINITY)
}

/// `true` where query `i` (at absolute position `k_len - q_len + i`) must not see key `j`.
///
/// Built from integer ranges on the device: every backend accepts those (candle cannot
/// create a bool tensor from host data).
fn causal_mask<B: Backend>(
    batch: usize,
    heads: usize,
    q_len: usize,
    k_len: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let offset = (k_len - q_len) as i64;
    let rows = Tensor::<B, 1, Int>::arange(offset..offset + q_len as i64, device)
        .reshape([q_len, 1])
        .expand([q_len, k_len]);
    let cols = Tensor::<B, 1, Int>::arange(0..k_len as i64, device)
        .reshape([1, k_len])
        .expand([q_len, k_len]);
    cols.greater(rows)
        .reshape([1, 1, q_len, k_len])
        .expand([batch, heads, q_len, k_len])
}
