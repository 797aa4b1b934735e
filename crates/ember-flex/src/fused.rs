//! What flex runs beyond burn's ops: products with quantized weights on `ember-kernels`'
//! block layouts (`[model] weights = "keep"`), instead of dequantizing the weight with
//! burn ops at every use (docs/performance.md, change 14), KV cache writes in place
//! (change 15), a decoded token's attention read straight from the cache (change 19), and
//! prefill attention computed block by block ([`crate::flash`], change 25).

use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::backend::flex::{FlexDevice, FlexTensor};
use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use ember::format::{QuantizedRows, StoredFloat};
use ember::nn::linear::{Native, NativeQuantized};
use ember::nn::{FusedOps, Gate};
use ember_kernels::dense::{DenseMatrix, FloatRows};
use ember_kernels::{Groups, Inputs, Isa, QuantMatrix, QUAD};

/// Flex's fused ops: quantized weights, in-place cache writes, norms, RoPE, gated
/// activations and attention on host memory (its f32 projections are burn's ops).
#[derive(Debug, Clone, Copy)]
pub struct FlexFused {
    inputs: Inputs,
    isa: Isa,
}

impl FlexFused {
    /// Products taking their inputs as `inputs` says (`backend.kernel_inputs`); attention on
    /// the best instruction set of this CPU ([`Isa::detect`]).
    pub fn new(inputs: Inputs) -> Self {
        Self {
            inputs,
            isa: Isa::detect(),
        }
    }

    /// The same ops with attention and the gated activation computed on `isa` (AVX2+FMA
    /// for any but [`Isa::Scalar`], where the CPU has them; the portable loops otherwise), so
    /// that tests run both paths on one machine.
    pub fn with_attention_isa(self, isa: Isa) -> Self {
        Self { isa, ..self }
    }
}

impl Default for FlexFused {
    /// The inputs `EMBER_KERNEL_INPUTS` names, else 8-bit ([`Inputs::from_env`]).
    fn default() -> Self {
        Self::new(Inputs::from_env())
    }
}

type B = crate::Backend;

/// Queries per (batch, head) up to which [`FlexFused`]'s attention reads K and V row by row
/// in place: a decoded token's query heads grouped on their KV head (Gemma 3's 4,
/// SmolLM2-1.7B's 1), or a few tokens. Longer prefills take [`crate::flash`]'s blocked
/// kernel, which first packs K.
const ATTENTION_QUERIES: usize = 16;

impl FusedOps<B> for FlexFused {
    /// [`crate::flash`]'s kernel for f32 with contiguous rows (K and V may have fewer heads
    /// than q, query head `h` reading KV head `h / groups`: the models no longer repeat
    /// them, change 30); burn's attention one (batch, head) per part of the kernels' pool
    /// otherwise (change 22; with K and V repeated: `per_head` declines fewer heads).
    fn causal_attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        flash(self.isa, q, k, v, None, true).or_else(|| per_head(q, k, v, None, true))
    }

    /// One pass per row, f32 (burn-flex 0.21 broadcasts the weight through a strided
    /// iterator: docs/performance.md, change 20).
    fn rms_norm(&self, x: &Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return None;
        }
        let (x, w) = (rows_of(x)?, rows_of(weight)?);
        let (x, w) = (x.values(), w.values());
        let mut out = vec![0f32; batch * seq * hidden];
        by_rows(&mut out, hidden, &|r, out| {
            let x = &x[r * hidden..(r + 1) * hidden];
            let mean_square = x.iter().map(|v| v * v).sum::<f32>() / hidden as f32;
            let norm = (mean_square + eps as f32).sqrt();
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
                *o = v / norm * w;
            }
        });
        Some(tensor(out, [batch, seq, hidden]))
    }

    /// `act(gate) * up` in one pass over the product's output, f32 (burn's ops read the two
    /// halves as strided views: change 20).
    fn gated(&self, gate_up: &Tensor<B, 3>, act: Gate) -> Option<Tensor<B, 3>> {
        let [batch, seq, double] = gate_up.dims();
        let inter = double / 2;
        if gate_up.dtype() != DType::F32 || double % 2 != 0 {
            return None;
        }
        let x = rows_of(gate_up)?;
        let x = x.values();
        let mut out = vec![0f32; batch * seq * inter];
        let simd = crate::flash::simd_here(self.isa);
        by_rows(&mut out, inter, &|r, out| {
            let (gate, up) = x[r * double..(r + 1) * double].split_at(inter);
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd_here` checked AVX2 and FMA.
                unsafe { gate_rows_avx2(act, gate, up, out) };
                return;
            }
            let _ = simd;
            gate_rows::<false>(act, gate, up, out);
        });
        Some(tensor(out, [batch, seq, inter]))
    }

    /// Rotate-half RoPE read from `x`'s strided view (a head of the fused q/k/v product),
    /// written contiguous, f32 (change 20).
    fn rotate(
        &self,
        x: &Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 4>> {
        let [batch, heads, seq, dim] = x.dims();
        let table = |t: &Tensor<B, 4>| {
            let [b, h, s, d] = t.dims();
            (b == 1 || b == batch) && (h, s, d) == (1, seq, dim) && t.dtype() == DType::F32
        };
        if x.dtype() != DType::F32 || !table(cos) || !table(sin) || dim % 2 != 0 {
            return None;
        }
        let (xs, cs, ss) = (Strided::rows(x)?, Strided::rows(cos)?, Strided::rows(sin)?);
        let tables_batch = cos.dims()[0];
        let half = dim / 2;
        let mut out = vec![0f32; batch * heads * seq * dim];
        by_rows(&mut out, dim, &|r, out| {
            let (b, h, p) = (r / (heads * seq), r / seq % heads, r % seq);
            let t = if tables_batch == 1 { 0 } else { b };
            let (x, c, s) = (
                xs.row(b, h, p, dim),
                cs.row(t, 0, p, dim),
                ss.row(t, 0, p, dim),
            );
            for j in 0..dim {
                let swapped = if j < half { x[j + half] } else { x[j - half] };
                out[j] = x[j] * c[j] + swapped * s[j];
            }
        });
        Some(tensor(out, [batch, heads, seq, dim]))
    }

    /// Reads K and V where they lie in the cache (burn-flex 0.21's attention first copies
    /// the attended positions of both out of the cache's strided view: 9 % of a decoded
    /// token of SmolLM2 at 128 positions, docs/performance.md change 19). f32 only. Past
    /// [`ATTENTION_QUERIES`] queries, [`crate::flash`]'s kernel (the keys the bias hides at
    /// either end of a row skipped), else burn's attention per head.
    fn attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 4>>,
    ) -> Option<Tensor<B, 4>> {
        let [batch, heads, queries, dim] = q.dims();
        let keys = k.dims()[2];
        if queries > ATTENTION_QUERIES {
            return flash(self.isa, q, k, v, bias, false)
                .or_else(|| per_head(q, k, v, bias, false));
        }
        if k.dims() != [batch, heads, keys, dim]
            || v.dims() != [batch, heads, keys, dim]
            || bias.is_some_and(|b| b.dims() != [batch, heads, queries, keys])
            || [q, k, v].iter().any(|t| t.dtype() != DType::F32)
            || bias.is_some_and(|b| b.dtype() != DType::F32)
        {
            return None;
        }
        // Rows of q, k and v must be contiguous (the dot products' inner loops).
        let (q, k, v) = (Strided::rows(q)?, Strided::rows(k)?, Strided::rows(v)?);
        let bias = match bias {
            Some(b) => Some(Strided::of(b)?),
            None => None,
        };
        let mut out = vec![0f32; batch * heads * queries * dim];
        let scale = (dim as f32).powf(-0.5);
        // One part per (batch, head), each its own piece of the output.
        let parts: Vec<Mutex<&mut [f32]>> = out.chunks_mut(queries * dim).map(Mutex::new).collect();
        let views = Views {
            q,
            k,
            v,
            bias,
            dim,
            keys,
            scale,
        };
        let simd = crate::flash::simd_here(self.isa);
        ember_kernels::Pool::global().run(batch * heads, &|bh| {
            let mut out = parts[bh].lock().unwrap_or_else(|e| e.into_inner());
            views.attend(simd, bh / heads, bh % heads, &mut out);
        });
        Some(tensor(out, [batch, heads, queries, dim]))
    }

    fn takes_dense(&self) -> bool {
        true
    }

    fn dense(
        &self,
        values: StoredFloat,
        [rows, cols]: [usize; 2],
        device: &FlexDevice,
        dtype: DType,
    ) -> ember::Result<Option<Native<B>>> {
        let matrix = match &values {
            StoredFloat::F32(v) => DenseMatrix::new(FloatRows::F32(v), rows, cols),
            StoredFloat::F16(v) => DenseMatrix::new(FloatRows::F16(v), rows, cols),
        };
        Ok(Some(Native(Arc::new(HostDense {
            matrix,
            dtype,
            device: *device,
        }))))
    }

    fn quantized(
        &self,
        tensor: &QuantizedRows<'_>,
        device: &burn::backend::flex::FlexDevice,
        dtype: DType,
    ) -> ember::Result<Option<Native<B>>> {
        let [rows, cols] = tensor.shape();
        // Parts of about 8 MiB of unpacked integers, whole quads of rows (the kernels'
        // interleaving), packed one by one into the matrix.
        let per = ((8 << 20) / cols.max(1)).max(QUAD) / QUAD * QUAD;
        let mut matrix: Option<QuantMatrix> = None;
        for start in (0..rows).step_by(per) {
            let n = per.min(rows - start);
            let part = tensor.part(start..start + n)?;
            let groups = Groups {
                bits: part.bits,
                group: part.group,
                u: &part.u,
                scale: &part.scale,
                min: &part.min,
            };
            let packed = QuantMatrix::new(groups, n, cols).and_then(|m| match matrix.as_mut() {
                None => {
                    matrix = Some(m);
                    Ok(())
                }
                Some(whole) => whole.append_rows(&m, rows),
            });
            if let Err(why) = packed {
                tracing::debug!("a {rows}x{cols} weight keeps the portable form: {why}");
                return Ok(None);
            }
        }
        Ok(matrix.map(|matrix| {
            Native(Arc::new(HostQuantized::<B> {
                matrix,
                inputs: self.inputs,
                dtype,
                device: *device,
            }))
        }))
    }

    fn write_positions(
        &self,
        dst: Tensor<B, 4>,
        start: usize,
        src: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let [batch, heads, capacity, dim] = dst.dims();
        let [b, h, seq, d] = src.dims();
        if (b, h, d) != (batch, heads, dim) || start + seq > capacity || dst.dtype() != src.dtype()
        {
            return Err(dst);
        }
        let mut t = match dst.into_primitive() {
            TensorPrimitive::Float(t) => t,
            other => return Err(Tensor::from_primitive(other)),
        };
        // In place only on a uniquely owned buffer that is exactly this tensor, in order.
        let whole = t.is_contiguous()
            && t.layout().start_offset() == 0
            && t.bytes().len() == batch * heads * capacity * dim * t.dtype().size();
        let rows = batch * heads;
        let data = src.clone().into_data();
        let written = whole
            && match t.dtype() {
                DType::F32 => write(
                    &mut t,
                    data.as_slice::<f32>().ok(),
                    rows,
                    capacity,
                    start,
                    seq * dim,
                    dim,
                ),
                DType::F16 => write(
                    &mut t,
                    data.as_slice::<half::f16>().ok(),
                    rows,
                    capacity,
                    start,
                    seq * dim,
                    dim,
                ),
                DType::BF16 => write(
                    &mut t,
                    data.as_slice::<half::bf16>().ok(),
                    rows,
                    capacity,
                    start,
                    seq * dim,
                    dim,
                ),
                _ => false,
            };
        let t = Tensor::from_primitive(TensorPrimitive::Float(t));
        if written {
            Ok(t)
        } else {
            Err(t)
        }
    }

    fn write_rows(
        &self,
        dst: Tensor<B, 4>,
        rows: &[(usize, usize)],
        src: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let [slots, heads, capacity, dim] = dst.dims();
        let [n, h, seq, d] = src.dims();
        if (h, d) != (heads, dim)
            || n != rows.len()
            || rows.iter().any(|&(r, s)| r >= slots || s + seq > capacity)
            || dst.dtype() != src.dtype()
        {
            return Err(dst);
        }
        let mut t = match dst.into_primitive() {
            TensorPrimitive::Float(t) => t,
            other => return Err(Tensor::from_primitive(other)),
        };
        let whole = t.is_contiguous()
            && t.layout().start_offset() == 0
            && t.bytes().len() == slots * heads * capacity * dim * t.dtype().size();
        let data = src.clone().into_data();
        let shape = [heads, capacity, seq, dim];
        let written = whole
            && match t.dtype() {
                DType::F32 => write_rows(&mut t, data.as_slice::<f32>().ok(), rows, shape),
                DType::F16 => write_rows(&mut t, data.as_slice::<half::f16>().ok(), rows, shape),
                DType::BF16 => write_rows(&mut t, data.as_slice::<half::bf16>().ok(), rows, shape),
                _ => false,
            };
        let t = Tensor::from_primitive(TensorPrimitive::Float(t));
        if written {
            Ok(t)
        } else {
            Err(t)
        }
    }
}

/// burn-flex's attention of each (batch, head) on its own part of the kernels' pool: burn-flex
/// 0.21 runs the heads of a prefill one after the other on one thread (18 % of a
/// single-thread SmolLM2 prefill, all of it serial at two threads; change 22). Any dtype:
/// the op is burn's.
fn per_head(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    is_causal: bool,
) -> Option<Tensor<B, 4>> {
    let [batch, heads, _, _] = q.dims();
    if k.dims()[..2] != [batch, heads] || v.dims()[..2] != [batch, heads] {
        return None;
    }
    let one = |t: &Tensor<B, 4>, b: usize, h: usize| {
        let [tb, th, _, _] = t.dims();
        // A bias broadcast over the batch or the heads (size 1 there) is shared.
        t.clone().narrow(0, if tb == 1 { 0 } else { b }, 1).narrow(
            1,
            if th == 1 { 0 } else { h },
            1,
        )
    };
    let options = burn::tensor::ops::AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    };
    let outs: Vec<Mutex<Option<Tensor<B, 4>>>> =
        (0..batch * heads).map(|_| Mutex::new(None)).collect();
    ember_kernels::Pool::global().run(batch * heads, &|bh| {
        let (b, h) = (bh / heads, bh % heads);
        let out = burn::tensor::module::attention(
            one(q, b, h),
            one(k, b, h),
            one(v, b, h),
            None,
            bias.map(|bias| one(bias, b, h)),
            options,
        );
        *outs[bh].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    });
    let outs: Vec<Tensor<B, 4>> = outs
        .into_iter()
        .map(|o| o.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect::<Option<_>>()?;
    let rows: Vec<Tensor<B, 4>> = outs
        .chunks(heads)
        .map(|heads| Tensor::cat(heads.to_vec(), 1))
        .collect();
    Some(Tensor::cat(rows, 0))
}

/// [`crate::flash`]'s attention of f32 `q: [batch, heads, queries, dim]` over `k, v: [batch,
/// kv_heads, keys, dim]` (`kv_heads` dividing `heads`), rows of stride 1, with a `bias`
/// broadcastable to `[batch, heads, queries, keys]` (any strides), causal or not; `None`
/// for any other operands (and for no keys, whose softmax burn's op defines).
fn flash(
    isa: Isa,
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
    causal: bool,
) -> Option<Tensor<B, 4>> {
    let [batch, heads, queries, dim] = q.dims();
    let [kb, kv_heads, keys, kd] = k.dims();
    let broadcast =
        |have: [usize; 4], want: [usize; 4]| have.iter().zip(want).all(|(&h, w)| h == w || h == 1);
    if (kb, kd) != (batch, dim)
        || v.dims() != k.dims()
        || kv_heads == 0
        || heads % kv_heads != 0
        || queries == 0
        || dim == 0
        || keys == 0
        || (causal && keys < queries)
        || [q, k, v].iter().any(|t| t.dtype() != DType::F32)
        || bias.is_some_and(|b| {
            b.dtype() != DType::F32 || !broadcast(b.dims(), [batch, heads, queries, keys])
        })
    {
        return None;
    }
    let (qs, ks, vs) = (Strided::rows(q)?, Strided::rows(k)?, Strided::rows(v)?);
    let bs = match bias {
        Some(b) => Some((Strided::of(b)?, b.dims())),
        None => None,
    };
    let problem = crate::flash::Problem {
        q: qs.operand(),
        k: ks.operand(),
        v: vs.operand(),
        // A dimension of size 1 is read at index 0 whatever the index asked.
        bias: bs.as_ref().map(|(s, dims)| crate::flash::Operand {
            strides: std::array::from_fn(|d| if dims[d] == 1 { 0 } else { s.strides[d] }),
            ..s.operand()
        }),
        batch,
        heads,
        kv_heads,
        queries,
        keys,
        dim,
        scale: (dim as f32).powf(-0.5),
        causal,
    };
    // Computed as [batch, queries, heads, dim], the layout the output projection reads.
    let out = tensor(problem.run(isa), [batch, queries, heads, dim]);
    Some(out.swap_dims(1, 2))
}

/// A flex f32 tensor whose values are one contiguous run (any start).
struct Rows {
    tensor: FlexTensor,
    range: (usize, usize),
}

impl Rows {
    fn values(&self) -> &[f32] {
        &self.tensor.storage::<f32>()[self.range.0..self.range.1]
    }
}

/// `t`'s values when they lie contiguous, in order.
fn rows_of<const D: usize>(t: &Tensor<B, D>) -> Option<Rows> {
    let tensor = t.clone().into_primitive().tensor();
    let range = tensor.layout().contiguous_offsets()?;
    Some(Rows { tensor, range })
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), (&FlexDevice, DType::F32))
}

/// `out = act(gate) * up`, with the activations as logistic functions of one exponential
/// each (`silu(g) = g * s(g)`, `gelu_tanh(g) = g * s(2 * inner)`, since `(1 + tanh(u)) / 2 =
/// s(2u)`), that exponential taken on a non-positive argument by the branch-free
/// [`crate::flash::exp_nonpositive`]: the loop vectorizes (libm's `tanhf` and `expf`, one
/// call per value, were 17 % of a Gemma 3 prefill). Relative error ~1e-7 (tested against
/// the portable ops).
#[inline(always)]
fn gate_rows<const FMA: bool>(act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
    // The logistic function s(t) = 1 / (1 + e^-t) from e = e^-|t|: 1 / (1 + e) for t >= 0,
    // e / (1 + e) below.
    let logistic = |t: f32| {
        let e = crate::flash::exp_nonpositive::<FMA>(-t.abs());
        let top = if t >= 0.0 { 1.0 } else { e };
        top / (1.0 + e)
    };
    let c = (2.0 / std::f32::consts::PI).sqrt();
    match act {
        Gate::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * logistic(g) * u;
            }
        }
        Gate::GeluTanh => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                let inner = c * (g + 0.044715 * g * g * g);
                *o = g * logistic(2.0 * inner) * u;
            }
        }
    }
}

/// [`gate_rows`] compiled for AVX2 with FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gate_rows_avx2(act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
    gate_rows::<true>(act, gate, up, out);
}

/// Fills `out`'s rows of `width` values with `fill(row, values)`, the rows split over the
/// kernels' pool in parts of at least 64 KiB of output (a decoded token's one row runs on
/// the calling thread).
fn by_rows(out: &mut [f32], width: usize, fill: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let rows = out.len() / width.max(1);
    let per = (16384 / width.max(1)).max(1);
    let parts: Vec<Mutex<&mut [f32]>> = out.chunks_mut(per * width).map(Mutex::new).collect();
    ember_kernels::Pool::global().run(parts.len(), &|c| {
        let mut part = parts[c].lock().unwrap_or_else(|e| e.into_inner());
        for (i, row) in part.chunks_exact_mut(width).enumerate() {
            fill(c * per + i, row);
        }
    });
    debug_assert!(rows == 0 || parts.len() == rows.div_ceil(per));
}

/// A 4-d f32 flex tensor read in place through its strides.
struct Strided {
    tensor: FlexTensor,
    strides: [usize; 4],
    offset: usize,
}

impl Strided {
    /// `t`'s view; `None` for a negative stride.
    fn of(t: &Tensor<B, 4>) -> Option<Self> {
        let tensor = t.clone().into_primitive().tensor();
        let layout = tensor.layout();
        let strides: Vec<usize> = layout
            .strides()
            .iter()
            .map(|&s| usize::try_from(s).ok())
            .collect::<Option<_>>()?;
        Some(Self {
            strides: strides.try_into().ok()?,
            offset: layout.start_offset(),
            tensor,
        })
    }

    /// [`Strided::of`] for a tensor whose last dimension is contiguous (stride 1), which
    /// [`Strided::row`] reads as one slice; `None` otherwise.
    fn rows(t: &Tensor<B, 4>) -> Option<Self> {
        Self::of(t).filter(|s| s.strides[3] == 1)
    }

    fn index(&self, a: usize, b: usize, c: usize, d: usize) -> usize {
        let s = self.strides;
        self.offset + a * s[0] + b * s[1] + c * s[2] + d * s[3]
    }

    /// The whole buffer the view reads.
    fn values(&self) -> &[f32] {
        self.tensor.storage::<f32>()
    }

    /// The view as [`crate::flash`] reads it.
    fn operand(&self) -> crate::flash::Operand<'_> {
        crate::flash::Operand {
            values: self.values(),
            offset: self.offset,
            strides: self.strides,
        }
    }

    /// `[a, b, c, ..dim]`, one slice (a view made by [`Strided::rows`]).
    fn row(&self, a: usize, b: usize, c: usize, dim: usize) -> &[f32] {
        let at = self.index(a, b, c, 0);
        &self.values()[at..at + dim]
    }
}

/// A decode attention's operands, read in place.
struct Views {
    q: Strided,
    k: Strided,
    v: Strided,
    bias: Option<Strided>,
    dim: usize,
    keys: usize,
    scale: f32,
}

impl Views {
    /// Head `h` of batch row `b`: `out` holds its queries' outputs, zeroed. On AVX2 with FMA
    /// where `simd` (the crate is built for baseline x86-64, whose 4-wide SSE made this a
    /// third slower than burn's attention it replaces).
    fn attend(&self, simd: bool, b: usize, h: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd_here` found AVX2 and FMA on this CPU.
            return unsafe { self.attend_avx2(b, h, out) };
        }
        let _ = simd;
        self.attend_on::<false>(b, h, out);
    }

    /// [`Views::attend_on`] in AVX2 registers where the head's width is a multiple of 32:
    /// four keys' products at a time, summed across lanes together (one key at a time paid a
    /// horizontal sum each, and a library `exp` per key); the softmax's exponentials by
    /// [`crate::flash::exp_nonpositive`], eight at a time; the weighted values summed in
    /// registers 32 features at a time (change 28: a batched decode step spent 23 % here).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, b: usize, h: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let Views {
            q,
            k,
            v,
            bias: _,
            dim,
            keys,
            scale,
        } = self;
        let (dim, keys, scale) = (*dim, *keys, *scale);
        if dim % 32 != 0 {
            return self.attend_on::<true>(b, h, out);
        }
        if keys == 0 {
            return;
        }
        let (ks, vs) = (k.values(), v.values());
        let (k0, v0) = (k.index(b, h, 0, 0), v.index(b, h, 0, 0));
        let (kt, vt) = (k.strides[2], v.strides[2]);
        let mut scores = vec![0f32; keys.next_multiple_of(8)];
        for (i, out) in out.chunks_exact_mut(dim).enumerate() {
            let query = q.row(b, h, i, dim);
            self.bias_row(b, h, i, &mut scores[..keys]);
            // The keys up to the last one the bias shows: a batched step's rows attend over
            // the decode window, whose positions past a row's own sequence are hidden, often
            // most of them (change 47).
            let live = scores[..keys]
                .iter()
                .rposition(|&s| s != f32::NEG_INFINITY)
                .map_or(0, |t| t + 1);
            if live == 0 {
                continue;
            }
            let padded = live.next_multiple_of(8);
            // Products, four keys at a time (a group whose keys the bias all hides skipped).
            let key = |t: usize| ks.as_ptr().add(k0 + t.min(keys - 1) * kt);
            for t in (0..live).step_by(4) {
                let n = (live - t).min(4);
                if scores[t..t + n].iter().all(|&s| s == f32::NEG_INFINITY) {
                    continue;
                }
                let rows = [key(t), key(t + 1), key(t + 2), key(t + 3)];
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in (0..dim).step_by(8) {
                    let x = _mm256_loadu_ps(query.as_ptr().add(c));
                    for (a, row) in acc.iter_mut().zip(rows) {
                        *a = _mm256_fmadd_ps(x, _mm256_loadu_ps(row.add(c)), *a);
                    }
                }
                // [sum(acc[0]), sum(acc[1]), sum(acc[2]), sum(acc[3])].
                let pairs = _mm256_hadd_ps(
                    _mm256_hadd_ps(acc[0], acc[1]),
                    _mm256_hadd_ps(acc[2], acc[3]),
                );
                let sums = _mm_add_ps(
                    _mm256_castps256_ps128(pairs),
                    _mm256_extractf128_ps(pairs, 1),
                );
                let mut dots = [0f32; 4];
                _mm_storeu_ps(dots.as_mut_ptr(), sums);
                for (s, d) in scores[t..t + n].iter_mut().zip(dots) {
                    *s += d * scale;
                }
            }
            let max = scores[..live]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            if max == f32::NEG_INFINITY {
                continue;
            }
            let scores = &mut scores[..padded];
            scores[live..].fill(f32::NEG_INFINITY);
            for s in scores.iter_mut() {
                *s = crate::flash::exp_nonpositive::<true>(*s - max);
            }
            let mut lanes = [0f32; 8];
            for chunk in scores.chunks_exact(8) {
                for (l, &p) in lanes.iter_mut().zip(chunk) {
                    *l += p;
                }
            }
            let total: f32 = lanes.iter().sum();
            let inv = _mm256_set1_ps(1.0 / total);
            for c in (0..dim).step_by(32) {
                let mut acc = [_mm256_setzero_ps(); 4];
                for (t, &p) in scores[..live].iter().enumerate() {
                    if p == 0.0 {
                        continue;
                    }
                    let (p, row) = (_mm256_set1_ps(p), vs.as_ptr().add(v0 + t * vt + c));
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(p, _mm256_loadu_ps(row.add(8 * l)), *a);
                    }
                }
                for (l, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * l), _mm256_mul_ps(*a, inv));
                }
            }
        }
    }

    /// Query `i` of head `h` of batch row `b`: its bias over the keys into `scores` (zeros
    /// without a bias).
    fn bias_row(&self, b: usize, h: usize, i: usize, scores: &mut [f32]) {
        match &self.bias {
            Some(bias) => {
                let (values, at, step) = (bias.values(), bias.index(b, h, i, 0), bias.strides[3]);
                for (t, s) in scores.iter_mut().enumerate() {
                    *s = values[at + t * step];
                }
            }
            None => scores.fill(0.0),
        }
    }

    /// `FMA`: products and sums as fused multiply-adds (only where the CPU has them:
    /// `mul_add` is a library call elsewhere).
    #[inline(always)]
    fn attend_on<const FMA: bool>(&self, b: usize, h: usize, out: &mut [f32]) {
        let Views {
            q,
            k,
            v,
            bias: _,
            dim,
            keys,
            scale,
        } = self;
        let (dim, keys) = (*dim, *keys);
        let (ks, vs) = (k.values(), v.values());
        let (k0, v0) = (k.index(b, h, 0, 0), v.index(b, h, 0, 0));
        let (kt, vt) = (k.strides[2], v.strides[2]);
        let mut scores = vec![0f32; keys];
        for (i, out) in out.chunks_exact_mut(dim).enumerate() {
            let query = q.row(b, h, i, dim);
            // The bias first: a hidden key (the decode window's positions past the sequence,
            // a serving row's padding) costs no product.
            self.bias_row(b, h, i, &mut scores);
            for (t, s) in scores.iter_mut().enumerate() {
                if *s != f32::NEG_INFINITY {
                    let at = k0 + t * kt;
                    *s += dot::<FMA>(query, &ks[at..at + dim]) * scale;
                }
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            if max == f32::NEG_INFINITY {
                // Every key hidden: the output stays zero (burn's gives NaN).
                continue;
            }
            let mut total = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            for (t, &p) in scores.iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                let p = p / total;
                let at = v0 + t * vt;
                for (o, &x) in out.iter_mut().zip(&vs[at..at + dim]) {
                    *o = if FMA { p.mul_add(x, *o) } else { *o + p * x };
                }
            }
        }
    }
}

/// `x . y` in eight independent sums (which the compiler vectorizes; one running sum it
/// may not reorder).
#[inline(always)]
fn dot<const FMA: bool>(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            lanes[l] = if FMA {
                a[l].mul_add(b[l], lanes[l])
            } else {
                lanes[l] + a[l] * b[l]
            };
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `dst[row, h, start.., :] = src[i, h, .., :]` for each `(row, start)` of `rows`, with
/// `[heads, capacity, seq, dim]` the sizes of both.
fn write_rows<E: burn::tensor::Element + bytemuck::Pod>(
    t: &mut FlexTensor,
    src: Option<&[E]>,
    rows: &[(usize, usize)],
    [heads, capacity, seq, dim]: [usize; 4],
) -> bool {
    let (Some(src), Some(dst)) = (src, t.try_storage_mut::<E>()) else {
        return false;
    };
    let run = seq * dim;
    if src.len() != rows.len() * heads * run {
        return false;
    }
    for (i, &(row, start)) in rows.iter().enumerate() {
        for h in 0..heads {
            let from = (i * heads + h) * run;
            let at = ((row * heads + h) * capacity + start) * dim;
            dst[at..at + run].copy_from_slice(&src[from..from + run]);
        }
    }
    true
}

/// Copies `rows` runs of `run` values from `src` into `t`'s rows of `capacity * dim` values,
/// at position `start`; false (nothing written) when `t` is shared or `src` is missing.
fn write<E: burn::tensor::Element + bytemuck::Pod>(
    t: &mut FlexTensor,
    src: Option<&[E]>,
    rows: usize,
    capacity: usize,
    start: usize,
    run: usize,
    dim: usize,
) -> bool {
    let (Some(src), Some(dst)) = (src, t.try_storage_mut::<E>()) else {
        return false;
    };
    if src.len() != rows * run {
        return false;
    }
    for (r, src) in src.chunks_exact(run).enumerate() {
        let at = (r * capacity + start) * dim;
        dst[at..at + run].copy_from_slice(src);
    }
    true
}

/// A quantized weight in host memory, multiplied by `ember-kernels` on the calling thread
/// and the kernels' pool. Generic over the backend: its tensors go through host data, a
/// copy of the activations only (free on flex, whose tensors are host memory).
pub struct HostQuantized<B: Backend> {
    matrix: QuantMatrix,
    inputs: Inputs,
    dtype: DType,
    device: B::Device,
}

impl<B: Backend> HostQuantized<B> {
    fn tensor(&self, values: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        host_tensor(values, shape, &self.device, self.dtype)
    }
}

impl<B: Backend> NativeQuantized<B> for HostQuantized<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        let data = x.cast(DType::F32).into_data();
        let x: std::borrow::Cow<'_, [f32]> = match data.as_slice::<f32>() {
            Ok(values) => values.into(),
            Err(_) => data.iter::<f32>().collect::<Vec<_>>().into(),
        };
        let mut out = vec![0f32; n * self.matrix.rows()];
        self.matrix
            .matmul_with(Isa::detect(), self.inputs, &x, n, &mut out);
        self.tensor(out, [n, self.matrix.rows()])
    }

    fn rows(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let (rows, cols) = (self.matrix.rows(), self.matrix.cols());
        let (out, n) = rows_by_id(ids, rows, cols, |r, row| self.matrix.dequantize_row(r, row));
        self.tensor(out, [n, cols])
    }

    fn shape(&self) -> [usize; 2] {
        [self.matrix.rows(), self.matrix.cols()]
    }

    fn bytes(&self) -> usize {
        self.matrix.bytes()
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn stack(&self, others: &[&Native<B>]) -> Option<Native<B>> {
        let mut parts = vec![&self.matrix];
        for other in others {
            parts.push(&other.0.as_any().downcast_ref::<HostQuantized<B>>()?.matrix);
        }
        Some(Native(Arc::new(HostQuantized::<B> {
            matrix: QuantMatrix::stack(&parts)?,
            inputs: self.inputs,
            dtype: self.dtype,
            device: self.device.clone(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A product's inputs (`[n, in]`) as f32 in host memory: the flex tensor's own buffer where
/// it is f32 and contiguous (a decoded token's ~120 products each copied theirs out with
/// `into_data` before), else a converted copy.
struct HostInputs {
    tensor: FlexTensor,
    copy: Option<Vec<f32>>,
}

impl HostInputs {
    fn of(x: Tensor<B, 2>) -> Self {
        let x = x.cast(DType::F32);
        let tensor = x.clone().into_primitive().tensor();
        let copy = (!tensor.is_contiguous()).then(|| x.into_data().iter::<f32>().collect());
        Self { tensor, copy }
    }

    fn values(&self) -> &[f32] {
        match &self.copy {
            Some(values) => values,
            None => {
                let at = self.tensor.layout().start_offset();
                let len = self.tensor.layout().shape().num_elements();
                &self.tensor.storage::<f32>()[at..at + len]
            }
        }
    }
}

/// A float weight kept as the checkpoint stores it (f32 or f16; `[model] weights =
/// "keep"`), in `ember_kernels::dense`'s panels, which multiply every input count (a
/// decoded token, a server's batched step, a prefill) and look rows up in place
/// (docs/performance.md, changes 34 and 35).
pub struct HostDense {
    matrix: DenseMatrix,
    /// The run's dtype (what `forward` and `rows` return).
    dtype: DType,
    device: FlexDevice,
}

impl HostDense {
    fn tensor(&self, values: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        host_tensor(values, shape, &self.device, self.dtype)
    }
}

/// `values` (`shape`, f32) as a tensor on `device` in `dtype`.
fn host_tensor<B1: Backend>(
    values: Vec<f32>,
    shape: [usize; 2],
    device: &B1::Device,
    dtype: DType,
) -> Tensor<B1, 2> {
    Tensor::<B1, 2>::from_data(TensorData::new(values, shape), (device, DType::F32)).cast(dtype)
}

/// The rows `ids` of a `[rows, cols]` weight, each written by `fill(row, out)`, and how many
/// ids there were: an id past the last row gives a row of zeros (as `Embedding::Parts`
/// needs).
fn rows_by_id<B1: Backend>(
    ids: Tensor<B1, 1, Int>,
    rows: usize,
    cols: usize,
    fill: impl Fn(usize, &mut [f32]),
) -> (Vec<f32>, usize) {
    let ids: Vec<i64> = ids.into_data().iter::<i64>().collect();
    let mut out = vec![0f32; ids.len() * cols];
    for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols.max(1))) {
        if let Some(r) = usize::try_from(id).ok().filter(|&r| r < rows) {
            fill(r, row);
        }
    }
    (out, ids.len())
}

impl NativeQuantized<B> for HostDense {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        let inputs = HostInputs::of(x);
        let x = inputs.values();
        let mut out = vec![0f32; n * self.matrix.rows()];
        self.matrix.matmul_with(Isa::detect(), x, n, &mut out);
        self.tensor(out, [n, self.matrix.rows()])
    }

    fn rows(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let (rows, cols) = (self.matrix.rows(), self.matrix.cols());
        let (out, n) = rows_by_id(ids, rows, cols, |r, row| self.matrix.row(r, row));
        self.tensor(out, [n, cols])
    }

    fn shape(&self) -> [usize; 2] {
        [self.matrix.rows(), self.matrix.cols()]
    }

    fn bytes(&self) -> usize {
        self.matrix.bytes()
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn stack(&self, others: &[&Native<B>]) -> Option<Native<B>> {
        let others = others
            .iter()
            .map(|o| Some(&o.0.as_any().downcast_ref::<HostDense>()?.matrix))
            .collect::<Option<Vec<_>>>()?;
        Some(Native(Arc::new(HostDense {
            matrix: self.matrix.stack(&others)?,
            dtype: self.dtype,
            device: self.device,
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
