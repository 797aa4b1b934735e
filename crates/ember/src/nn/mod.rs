//! Layers shared by model families.
//!
//! # How the reductions are written
//!
//! burn-cubecl-fusion 0.21 fuses the element-wise ops that feed a reduction into the
//! reduction's kernel ("fuse on read"). When one of those intermediates is also used after the
//! reduction, the kernel writes it out too, and with a reduced-precision input (an f16 `x` cast
//! to f32) it can pick that output as its layout reference, which its launcher then looks up
//! among the inputs: an index-out-of-bounds panic while autotuning, on every CubeCL backend
//! (wgpu, cuda; tracel-ai/burn#5292). So each reduction here reads a chain of element-wise ops
//! that nothing else uses, starting from tensors that are already materialised (the layer's
//! input, a matmul's output, an earlier reduction), and the ops after it recompute that chain
//! instead of sharing it. Recomputing a cast or a subtraction is cheap next to the memory
//! traffic of a materialised intermediate; on backends without fusion it costs one more cast.

pub mod attention;
pub mod kv_cache;
pub mod linear;
pub mod rope;

use burn::prelude::*;
use burn::tensor::FloatDType;

/// Ops a backend can run as one kernel where the portable composition of burn ops takes
/// several (each a launch on backends without fusion). A backend crate hands them to the
/// engine in [`Capabilities::fused`](crate::backend::Capabilities::fused), and the model
/// families take them from the [`Loader`](crate::format::Loader); the functions here fall back
/// to the portable path, which tests compare them with. Every op defaults to `None` (the
/// portable path): a backend implements the ones it has.
pub trait FusedOps<B: Backend>: Send + Sync {
    /// [`rms_norm`] as one op, or `None` where the backend cannot (the caller then runs the
    /// portable path).
    fn rms_norm(&self, x: &Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 3>> {
        let _ = (x, weight, eps);
        None
    }

    /// `x + y` and the [`rms_norm`] of that sum (`x, y: [batch, seq, hidden]`, one dtype) as
    /// one op: a residual add folded into the norm that reads it ([`add_rms_norm_with`]'s
    /// reference). `None` where the backend cannot.
    fn add_rms_norm(
        &self,
        x: &Tensor<B, 3>,
        y: &Tensor<B, 3>,
        weight: &Tensor<B, 1>,
        eps: f64,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        let _ = (x, y, weight, eps);
        None
    }

    /// Whether the backend has [`FusedOps::add_rms_norm`]: a model then keeps a sublayer's
    /// output apart from the residual until the next norm adds it, instead of adding it with
    /// the projection ([`FusedOps::linear_add`], which such a backend does not fuse).
    fn fuses_add_rms_norm(&self) -> bool {
        false
    }

    /// Scaled dot-product attention (scale `1/sqrt(head_dim)`, no causal mask) of `q: [b, h,
    /// q_len, d]` over `k, v: [b, h, k_len, d]` with an additive `bias` broadcastable to
    /// `[b, h, q_len, k_len]`, as one op, or `None` ([`attention::attend_all`]'s reference).
    fn attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 4>>,
    ) -> Option<Tensor<B, 4>> {
        let _ = (q, k, v, bias);
        None
    }

    /// One decode step's attention over the cache, as [`attention::attend_all`] computes it
    /// with [`attention::position_bias`]: `q: [b, heads, 1, d]` over the keys `keys` of `k,
    /// v: [b, kv_heads, n, d]` (`keys.end <= n`; the rest is never read), query head `h`
    /// reading KV head `h / (heads / kv_heads)`, scale `1/sqrt(d)`; `[b, 1, heads * d]`, the
    /// layout the output projection reads. The keys are a range of the host (a sliding
    /// window's start, the real length), so no bias tensor is built or read. `None` where
    /// the backend cannot.
    fn decode_attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        keys: std::ops::Range<usize>,
    ) -> Option<Tensor<B, 3>> {
        let _ = (q, k, v, keys);
        None
    }

    /// `act(gate) * up` for `gate_up: [batch, seq, 2 * inter]` (the gate's `inter` features,
    /// then the up projection's: [`gated`]'s reference), as one op, or `None`.
    fn gated(&self, gate_up: &Tensor<B, 3>, act: Gate) -> Option<Tensor<B, 3>> {
        let _ = (gate_up, act);
        None
    }

    /// `gated(gate_up, act)` times a dense `w: [inter, out]` (a gated MLP's down projection,
    /// `gate_up: [batch, seq, 2 * inter]`; [`gated_linear`]'s reference) as one op: `[batch,
    /// seq, out]`, or `None` where the backend cannot or where the two ops are faster (a
    /// matrix-vector kernel declines a prompt's rows).
    fn gated_linear(
        &self,
        gate_up: &Tensor<B, 3>,
        act: Gate,
        w: &Tensor<B, 2>,
    ) -> Option<Tensor<B, 3>> {
        let _ = (gate_up, act, w);
        None
    }

    /// [`rope::rotate`] of `x: [batch, heads, seq, head_dim]` by `cos`, `sin` (`[1 or batch,
    /// 1, seq, head_dim]`, the sign of rotate-half folded into `sin`'s first half) as one op,
    /// or `None`.
    fn rotate(
        &self,
        x: &Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        let _ = (x, cos, sin);
        None
    }

    /// Causal attention of a square prefill (`q: [b, h, seq, d]`, query `i` sees keys
    /// `0..=i`), or `None` ([`attention::causal_attention`]'s burn op). `k, v: [b, kv_heads,
    /// seq, d]` may have fewer heads than `q` (grouped-query attention, query head `h`
    /// reading KV head `h / (h_total / kv_heads)`): an implementation that needs them
    /// repeated returns `None` and is asked again with them repeated.
    fn causal_attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        let _ = (q, k, v);
        None
    }

    /// [`FusedOps::add_rms_norm`] of `x + y` by `weight` through a dense `w: [hidden, out]`
    /// as one op: `(x + y, rms_norm(x + y) * weight matmul w)`, equal to the two ops
    /// (the normed rows rounded to the dtype before the product), or `None` where the
    /// backend cannot or where the two ops are faster (a prompt's rows).
    fn add_rms_norm_linear(
        &self,
        x: &Tensor<B, 3>,
        y: &Tensor<B, 3>,
        weight: &Tensor<B, 1>,
        eps: f64,
        w: &Tensor<B, 2>,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        let _ = (x, y, weight, eps, w);
        None
    }

    /// `x.matmul(w)` for `x: [batch, seq, in]` and a dense `w: [in, out]` as the backend's
    /// own op ([`linear`]'s reference), or `None` where it cannot or where burn's matmul is
    /// faster (a matrix-vector kernel declines a prompt's rows).
    fn linear(&self, x: &Tensor<B, 3>, w: &Tensor<B, 2>) -> Option<Tensor<B, 3>> {
        let _ = (x, w);
        None
    }

    /// [`linear_add`] as one op (a matmul that accumulates into the residual), or `None`.
    fn linear_add(
        &self,
        residual: &Tensor<B, 3>,
        x: &Tensor<B, 3>,
        w: &Tensor<B, 2>,
    ) -> Option<Tensor<B, 3>> {
        let _ = (residual, x, w);
        None
    }

    /// The backend's own form of a quantized `[out, in]` weight, read in parts of rows from
    /// `tensor`, on `device`, computing in `dtype`; `None` keeps the portable form
    /// ([`linear::QuantizedWeight`]). Equal to the portable form within the stated
    /// tolerance of the backend's kernels (tested per GGUF type).
    fn quantized(
        &self,
        tensor: &crate::format::QuantizedRows<'_>,
        device: &B::Device,
        dtype: burn::tensor::DType,
    ) -> crate::Result<Option<linear::Native<B>>> {
        let _ = (tensor, device, dtype);
        Ok(None)
    }

    /// Whether the backend keeps float weights in their stored type ([`FusedOps::dense`]):
    /// the loader then reads them unconverted (`[model] weights = "keep"`).
    fn takes_dense(&self) -> bool {
        false
    }

    /// The backend's own form of a float `[out, in]` weight stored as `values` (f32 or
    /// f16, row-major), computing in `dtype`; `None` keeps the portable form (a dense
    /// tensor in the run's dtype, transposed). Asked only where [`FusedOps::takes_dense`].
    fn dense(
        &self,
        values: crate::format::StoredFloat,
        shape: [usize; 2],
        device: &B::Device,
        dtype: burn::tensor::DType,
    ) -> crate::Result<Option<linear::Native<B>>> {
        let _ = (values, shape, device, dtype);
        Ok(None)
    }

    /// `dst[.., start..start + seq, ..] = src` along dim 2 (a KV cache's positions) in
    /// place, returning `dst`; `Err(dst)` where the backend cannot, and the caller runs
    /// burn's `slice_assign`. (burn-flex 0.21's `slice_assign` copies the whole destination
    /// at every call, even when it is uniquely owned: 2 x 3 MiB per layer per decoded token
    /// of SmolLM2 at a 4096-token context; docs/performance.md, change 15.)
    fn write_positions(
        &self,
        dst: Tensor<B, 4>,
        start: usize,
        src: &Tensor<B, 4>,
    ) -> std::result::Result<Tensor<B, 4>, Tensor<B, 4>> {
        let _ = (start, src);
        Err(dst)
    }

    /// RoPE of a step's queries and keys with the keys' and values' write into the KV cache,
    /// as one op: `q: [b, heads, seq, d]`, `k, v: [b, kv_heads, seq, d]` (any strides: views
    /// of a projection's output), rotated by `cos, sin: [1 or b, 1, seq, d]` as
    /// [`rope::rotate`] does (rotate-half, its sign folded into `sin`'s first half); the
    /// rotated `k` and `v` written into `cache = (keys, values)`, each `[slots, kv_heads, n,
    /// d]`, at `cache[row_i, .., start_i..start_i + seq, ..]` for batch row `i` (`rows[i] =
    /// (row_i, start_i)`), in place where the cache is not shared. Returns the rotated `q`
    /// (`[b, heads, seq, d]`, contiguous) and the written cache; `Err(cache)` where the
    /// backend cannot, untouched, and the caller rotates with [`rope::rotate`] and writes
    /// with `slice_assign` (the portable path this op is tested against).
    #[allow(clippy::too_many_arguments)]
    fn rope_write(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: (Tensor<B, 4>, Tensor<B, 4>),
        rows: &[(usize, usize)],
    ) -> std::result::Result<RopeWritten<B>, (Tensor<B, 4>, Tensor<B, 4>)> {
        let _ = (q, k, v, cos, sin, rows);
        Err(cache)
    }

    /// [`FusedOps::rope_write`] of a step's projection `qkv: [b, seq, (heads + 2 kv_heads)
    /// * d]` as it comes out of the matmul (each token's query heads, then its key heads, then
    /// its value heads; `kv_heads` and `d` are the cache's), before it is split into heads:
    /// one op without the views' copies a backend makes of a split. Same results and
    /// `Err(cache)` as `rope_write`.
    #[allow(clippy::too_many_arguments)]
    fn rope_write_packed(
        &self,
        qkv: &Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: (Tensor<B, 4>, Tensor<B, 4>),
        rows: &[(usize, usize)],
    ) -> std::result::Result<RopeWritten<B>, (Tensor<B, 4>, Tensor<B, 4>)> {
        let _ = (qkv, heads, cos, sin, rows);
        Err(cache)
    }

    /// [`FusedOps::rope_write_packed`] of one decode step (`qkv: [b, 1, ..]`) with
    /// [`FusedOps::decode_attention`] of its rotated queries over positions `keys` of the
    /// written cache (`keys.end - 1` the step's position, the same for every batch row), as
    /// one op: the attention's output `[b, 1, heads * d]` and the written cache. Same
    /// results as the two ops; `Err(cache)`, untouched, where the backend cannot.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn rope_write_attend(
        &self,
        qkv: &Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: (Tensor<B, 4>, Tensor<B, 4>),
        rows: &[(usize, usize)],
        keys: std::ops::Range<usize>,
    ) -> std::result::Result<
        (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)),
        (Tensor<B, 4>, Tensor<B, 4>),
    > {
        let _ = (qkv, heads, cos, sin, rows, keys);
        Err(cache)
    }

    /// `dst[row_i, .., start_i..start_i + seq, ..] = src[i]` for each `(row_i, start_i)` of
    /// `rows` (one per row of `src: [rows, heads, seq, dim]`), in place: a slotted KV
    /// cache's rows written at each sequence's own position. `Err(dst)` where the backend
    /// cannot; the caller then writes row by row with `slice_assign`.
    fn write_rows(
        &self,
        dst: Tensor<B, 4>,
        rows: &[(usize, usize)],
        src: &Tensor<B, 4>,
    ) -> std::result::Result<Tensor<B, 4>, Tensor<B, 4>> {
        let _ = (rows, src);
        Err(dst)
    }
}

/// What [`FusedOps::rope_write`] returns: the rotated queries `[b, heads, seq, d]`, and the
/// cache's keys and values with the step's rotated keys and values written.
#[derive(Debug, Clone)]
pub struct RopeWritten<B: Backend> {
    /// The rotated queries, contiguous.
    pub q: Tensor<B, 4>,
    /// The cache's keys, `[slots, kv_heads, n, d]`.
    pub keys: Tensor<B, 4>,
    /// The cache's values, `[slots, kv_heads, n, d]`.
    pub values: Tensor<B, 4>,
}

/// A backend's fused ops as a model holds them.
#[derive(Clone)]
pub struct Fused<B: Backend>(pub std::sync::Arc<dyn FusedOps<B>>);

impl<B: Backend> Fused<B> {
    /// The ops.
    pub fn ops(&self) -> &dyn FusedOps<B> {
        self.0.as_ref()
    }
}

impl<B: Backend> std::fmt::Debug for Fused<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FusedOps")
    }
}

/// The activation of a gated MLP's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `x * sigmoid(x)` (SwiGLU: Llama, Qwen).
    Silu,
    /// GELU's tanh approximation (GeGLU: Gemma).
    GeluTanh,
}

/// `act(gate) * up` for `gate_up: [batch, seq, 2 * inter]`, the gate's `inter` features
/// first: through `fused` where it can, else burn's ops on the two halves.
pub fn gated<B: Backend>(
    gate_up: Tensor<B, 3>,
    act: Gate,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 3> {
    if let Some(y) = fused.and_then(|f| f.gated(&gate_up, act)) {
        return y;
    }
    let inter = gate_up.dims()[2] / 2;
    let gate = gate_up.clone().narrow(2, 0, inter);
    let gate = match act {
        Gate::Silu => burn::tensor::activation::silu(gate),
        Gate::GeluTanh => burn::tensor::activation::gelu_approximate(gate),
    };
    gate.mul(gate_up.narrow(2, inter, inter))
}

/// `gated(gate_up, act)` through the projection `w` (a gated MLP's down projection):
/// through `fused` as one op where it can (dense weights) or through the kernels of a weight
/// in the backend's own form ([`linear::NativeQuantized::gated_forward`]), else [`gated`] and
/// [`linear::Weight::forward`].
pub fn gated_linear<B: Backend>(
    gate_up: Tensor<B, 3>,
    act: Gate,
    w: &linear::Weight<B>,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 3> {
    match (fused, w) {
        (Some(f), linear::Weight::Dense(dense)) => {
            if let Some(y) = f.gated_linear(&gate_up, act, dense) {
                return y;
            }
        }
        (_, linear::Weight::Native(n)) => {
            let [batch, seq, features] = gate_up.dims();
            let rows = gate_up.clone().reshape([batch * seq, features]);
            if let Some(y) = n.0.gated_forward(&rows, act) {
                let out = y.dims()[1];
                return y.reshape([batch, seq, out]);
            }
        }
        _ => {}
    }
    w.forward_with(gated(gate_up, act, fused), fused)
}

/// [`rms_norm`] through `fused` where it can, else the portable composition.
pub fn rms_norm_with<B: Backend>(
    x: Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    eps: f64,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 3> {
    // A backend's fused op takes one dtype; a wider residual stream goes the portable way.
    let fused = fused.filter(|_| x.dtype() == weight.dtype());
    match fused.and_then(|f| f.rms_norm(&x, weight, eps)) {
        Some(y) => y,
        None => rms_norm(x, weight, eps),
    }
}

/// `x + y` and its [`rms_norm`]: through `fused` as one op where it can, else the add and
/// [`rms_norm_with`].
pub fn add_rms_norm_with<B: Backend>(
    x: Tensor<B, 3>,
    y: Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    eps: f64,
    fused: Option<&dyn FusedOps<B>>,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let same = x.dtype() == y.dtype() && x.dtype() == weight.dtype();
    if let Some(out) = fused
        .filter(|_| same)
        .and_then(|f| f.add_rms_norm(&x, &y, weight, eps))
    {
        return out;
    }
    let sum = x.add(y);
    let normed = rms_norm_with(sum.clone(), weight, eps, fused);
    (sum, normed)
}

/// [`add_rms_norm_with`] and the normed rows through the projection `w`: `(x + y,
/// rms_norm(x + y) * weight matmul w)`, one op through `fused` where it can (dense weights)
/// or through the kernels of a weight in the backend's own form
/// ([`linear::NativeQuantized::add_rms_norm_forward`]), else the two.
pub fn add_rms_norm_linear_with<B: Backend>(
    x: Tensor<B, 3>,
    y: Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    eps: f64,
    w: &linear::Weight<B>,
    fused: Option<&dyn FusedOps<B>>,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let same = x.dtype() == y.dtype() && x.dtype() == weight.dtype();
    match (fused, w, same) {
        (Some(f), linear::Weight::Dense(dense), true) => {
            if let Some(out) = f.add_rms_norm_linear(&x, &y, weight, eps, dense) {
                return out;
            }
        }
        (_, linear::Weight::Native(n), true) => {
            let [batch, seq, hidden] = x.dims();
            let rows = |t: &Tensor<B, 3>| t.clone().reshape([batch * seq, hidden]);
            if let Some((sum, out)) = n.0.add_rms_norm_forward(&rows(&x), &rows(&y), weight, eps) {
                let width = out.dims()[1];
                return (
                    sum.reshape([batch, seq, hidden]),
                    out.reshape([batch, seq, width]),
                );
            }
        }
        _ => {}
    }
    let (sum, normed) = add_rms_norm_with(x, y, weight, eps, fused);
    (sum, w.forward_with(normed, fused))
}

/// `residual + x.matmul(w)` ([`linear_add`]) through `fused` where it can.
pub fn linear_add_with<B: Backend>(
    residual: Tensor<B, 3>,
    x: Tensor<B, 3>,
    w: &Tensor<B, 2>,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 3> {
    match fused.and_then(|f| f.linear_add(&residual, &x, w)) {
        Some(y) => y,
        None => linear_add(residual, x, w),
    }
}

/// `residual + x.matmul(w)` for `x: [batch, seq, in]`, `w: [in, out]`, `residual: [batch,
/// seq, out]`: a projection added to the residual stream.
pub fn linear_add<B: Backend>(
    residual: Tensor<B, 3>,
    x: Tensor<B, 3>,
    w: &Tensor<B, 2>,
) -> Tensor<B, 3> {
    residual.add(linear(x, w))
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, with the mean square taken in f32
/// whatever the run's dtype; the result has `weight`'s dtype (a residual stream kept in f32
/// comes out in the run's dtype).
///
/// `x`: `[batch, seq, hidden]`; `weight`: `[hidden]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = weight.dtype();
    // See the module docs: the reduce reads its own cast of `x`, the division another one.
    let mean_square = f32_of(&x).square().mean_dim(2);
    let normed = f32_of(&x)
        .div(mean_square.add_scalar(eps).sqrt())
        .cast(dtype);
    normed.mul(weight.clone().unsqueeze::<3>())
}

/// `x` as f32 (a no-op when it already is).
fn f32_of<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Tensor<B, D> {
    x.clone().cast(FloatDType::F32)
}

/// `x.matmul(w)` for `x: [batch, seq, in]`, `w: [in, out]` -> `[batch, seq, out]`.
pub fn linear<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 2>) -> Tensor<B, 3> {
    linear_with(x, w, None)
}

/// [`linear`] through `fused` where it can (a decode step's matrix-vector kernel), else
/// burn's matmul.
pub fn linear_with<B: Backend>(
    x: Tensor<B, 3>,
    w: &Tensor<B, 2>,
    fused: Option<&dyn FusedOps<B>>,
) -> Tensor<B, 3> {
    if let Some(y) = fused.and_then(|f| f.linear(&x, w)) {
        return y;
    }
    let [batch, seq, features] = x.dims();
    let [_, out] = w.dims();
    x.reshape([batch * seq, features])
        .matmul(w.clone())
        .reshape([batch, seq, out])
}

/// LayerNorm over the last dim, statistics in f32 whatever the run's dtype:
/// `(x - mean) / sqrt(var + eps) * weight + bias`. `x`: `[batch, seq, hidden]`.
pub fn layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    let dtype = x.dtype();
    // See the module docs: each reduction reads a chain of its own.
    let mean = f32_of(&x).mean_dim(2);
    let var = f32_of(&x).sub(mean.clone()).square().mean_dim(2);
    let normed = f32_of(&x)
        .sub(mean)
        .div(var.add_scalar(eps).sqrt())
        .cast(dtype);
    normed
        .mul(weight.clone().unsqueeze::<3>())
        .add(bias.clone().unsqueeze::<3>())
}

/// GELU with the exact erf, `x * (1 + erf(x / sqrt(2))) / 2`, from burn's elementwise ops.
/// burn's `gelu` is not this on every backend: burn-candle 0.21 maps it to candle's tanh
/// approximation (Whisper's encoder output moved by 5e-3 in f32 on candle against 1e-5 on
/// flex, measured on tiny.en).
pub fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone()
        .mul(x.div_scalar(std::f64::consts::SQRT_2).erf().add_scalar(1.0))
        .mul_scalar(0.5)
}

/// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh` in `transformers`):
/// `x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))) / 2`.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = x
        .clone()
        .add(x.clone().powi_scalar(3).mul_scalar(0.044715))
        .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul(inner.tanh().add_scalar(1.0)).mul_scalar(0.5)
}

/// Softmax over the last dim of `scale * scores + bias`, computed in f32 and returned in
/// `scores`' dtype. `bias` is additive (0 where visible, `-inf` where hidden) and broadcasts.
///
/// Written as `exp(s - logsumexp(s))` so that both reductions (max and sum) read chains of
/// their own from `scores` (see the module docs); `scores` is usually a matmul's output.
pub fn scaled_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    bias: Option<&Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let dtype = scores.dtype();
    let logits = || {
        let s = f32_of(&scores).mul_scalar(scale);
        match bias {
            Some(b) => s.add(f32_of(b)),
            None => s,
        }
    };
    let max = logits().max_dim(3);
    let sum = logits().sub(max.clone()).exp().sum_dim(3);
    let log_norm = max.add(sum.log());
    logits().sub(log_norm).exp().cast(dtype)
}
