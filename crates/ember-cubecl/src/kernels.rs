//! The kernels, written once in CubeCL. Each reads the element type chosen at run time
//! (`#[define(F)]`: f32, f16, bf16), accumulates in f32 and rounds once on store.
//!
//! Reductions across a cube go through shared memory ([`block_sum`], [`block_max`]): plane
//! (warp/SIMD-group) operations are not available on every adapter (Mesa's lavapipe, which CI
//! runs, has none), and this form runs everywhere. A plane variant is a later step, checked on
//! the GPU machine.

// The `#[cube(launch_unchecked)]` macro generates a module and a struct per kernel that cannot carry
// docs; the kernel functions are documented.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Units per cube of every kernel here: a power of two (the tree reductions halve it), at most
/// the 256 invocations every Vulkan, Metal and CUDA device accepts, and at least the largest
/// head dimension the attention kernel holds per unit ([`MAX_HEAD_DIM`]).
pub const BLOCK: usize = 256;

/// The largest head dimension [`attention`] takes (one output dimension per unit).
pub const MAX_HEAD_DIM: usize = BLOCK;

/// Sum of `shared[0..CUBE_DIM_X]` (each unit wrote its own entry), returned to every unit.
/// `shared` is clobbered.
#[cube]
fn block_sum(shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    sync_cube();
    // The cube's width as a run-time value: a comptime one cannot be halved in a loop.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if unit < half {
            shared[unit] += shared[unit + half];
        }
        sync_cube();
        half /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Maximum of `shared[0..CUBE_DIM_X]`, returned to every unit; `shared` is clobbered.
#[cube]
fn block_max(shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    sync_cube();
    // The cube's width as a run-time value: a comptime one cannot be halved in a loop.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if unit < half {
            shared[unit] = f32::max(shared[unit], shared[unit + half]);
        }
        sync_cube();
        half /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// RMSNorm of each row of `x: [batch, seq, hidden]` (any strides) into the contiguous
/// `out`: `x / sqrt(mean(x²) + eps) * weight`, one cube per row.
#[cube(launch_unchecked)]
pub fn rms_norm<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let unit = UNIT_POS as usize;
    let seq = x.shape(1);
    let hidden = x.shape(2);
    let x_row = (row / seq) * x.stride(0) + (row % seq) * x.stride(1);
    let x_step = x.stride(2);
    let out_row = row * hidden;

    let mut partial = SharedMemory::<f32>::new(block);
    let mut sum = 0.0f32;
    let mut i = unit;
    while i < hidden {
        let v = f32::cast_from(x[x_row + i * x_step]);
        sum += v * v;
        i += block;
    }
    partial[unit] = sum;
    let total = block_sum(&mut partial);
    let inv = f32::inverse_sqrt(total / f32::cast_from(hidden) + eps);

    let w_step = weight.stride(0);
    let mut i = unit;
    while i < hidden {
        let v = f32::cast_from(x[x_row + i * x_step]) * inv;
        out[out_row + i] = F::cast_from(v * f32::cast_from(weight[i * w_step]));
        i += block;
    }
}

/// Attention of each query row of `q: [batch, heads, q_len, dim]` over keys `first..len` of
/// `k, v: [batch, heads, k_len, dim]` (any strides), scale `scale`, with the additive `bias`
/// (broadcast over its dims of size 1) when `has_bias` (else `bias` is not read), into the
/// contiguous `out: [batch, heads, q_len, dim]`. One cube per query row (cube position x:
/// row, y: head, z: batch); `dim <= block`.
///
/// The keys go by chunks of `block`: each unit scores one key of the chunk (f32 dot product),
/// the chunk's maximum and sum of exponentials come from shared-memory reductions, and each
/// unit then adds the chunk's weighted values of its output dimension to a running sum that
/// is rescaled as the maximum grows (the online softmax of flash attention).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn attention<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    first: u32,
    len: u32,
    scale: f32,
    #[comptime] has_bias: bool,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let head = CUBE_POS_Y as usize;
    let batch = CUBE_POS_Z as usize;
    let unit = UNIT_POS as usize;
    let dim = q.shape(3);
    let q_len = q.shape(2);
    let heads = q.shape(1);

    // The query row, scaled, in f32.
    let mut query = SharedMemory::<f32>::new(block);
    let q_at = batch * q.stride(0) + head * q.stride(1) + row * q.stride(2);
    if unit < dim {
        query[unit] = f32::cast_from(q[q_at + unit * q.stride(3)]) * scale;
    }

    let k_at = batch * k.stride(0) + head * k.stride(1);
    let v_at = batch * v.stride(0) + head * v.stride(1);
    let (k_step, k_dim) = (k.stride(2), k.stride(3));
    let (v_step, v_dim) = (v.stride(2), v.stride(3));
    let mut b_at = 0usize;
    let mut b_len = 1usize;
    let mut b_step = 0usize;
    if has_bias {
        b_at = (batch % bias.shape(0)) * bias.stride(0)
            + (head % bias.shape(1)) * bias.stride(1)
            + (row % bias.shape(2)) * bias.stride(2);
        b_len = bias.shape(3);
        b_step = bias.stride(3);
    }

    let mut weights = SharedMemory::<f32>::new(block);
    let mut scratch = SharedMemory::<f32>::new(block);
    let start = first as usize;
    let end = len as usize;
    let neg = f32::new(-3.0e38);
    let mut running_max = neg;
    let mut running_sum = 0.0f32;
    let mut acc = 0.0f32;
    sync_cube();

    let mut chunk = start;
    while chunk < end {
        // This unit's key: its score, or the floor past the end (no infinity literal: CubeCL's
        // CUDA source prints it as `inf`, which NVRTC rejects; its weight is set to 0 below).
        let key = chunk + unit;
        let mut score = neg;
        if key < end {
            let mut dot = 0.0f32;
            let at = k_at + key * k_step;
            for d in 0..dim {
                dot += query[d] * f32::cast_from(k[at + d * k_dim]);
            }
            score = dot;
            if has_bias {
                score += f32::cast_from(bias[b_at + (key % b_len) * b_step]);
            }
        }
        scratch[unit] = score;
        let chunk_max = block_max(&mut scratch);
        let new_max = f32::max(running_max, chunk_max);
        let mut p = 0.0f32;
        if key < end {
            p = f32::exp(score - new_max);
        }
        weights[unit] = p;
        scratch[unit] = p;
        let chunk_sum = block_sum(&mut scratch);
        let rescale = f32::exp(running_max - new_max);
        running_sum = running_sum * rescale + chunk_sum;
        running_max = new_max;
        if unit < dim {
            let mut part = 0.0f32;
            let keys = u32::min(block as u32, (end - chunk) as u32) as usize;
            for j in 0..keys {
                part += weights[j] * f32::cast_from(v[v_at + (chunk + j) * v_step + unit * v_dim]);
            }
            acc = acc * rescale + part;
        }
        sync_cube();
        chunk += block;
    }

    if unit < dim {
        let mut value = 0.0f32;
        if running_sum > 0.0 {
            value = acc / running_sum;
        }
        let o = ((batch * heads + head) * q_len + row) * dim + unit;
        out[o] = F::cast_from(value);
    }
}

/// RoPE of one step's queries and keys with the keys' and values' write into the KV cache.
///
/// `q: [b, heads, seq, d]`, `k, v: [b, kv, seq, d]` (any strides; `k`'s elements start at
/// `k_at`, `v`'s at `v_at`: views of one projection's output), rotated by `cos, sin: [1
/// or b, 1, seq, d]` (rotate-half with its sign in `sin`'s first half: `x[i] cos[i] +
/// x[(i + d/2) % d] sin[i]`, in f32, rounded once). The rotated q goes to the contiguous
/// `q_out: [b, heads, seq, d]`; the rotated k and the values to `keys, values: [slots, kv, n,
/// d]` (any strides) at row `row`, position `start + s` of batch row `b`: `row = row0 + b`,
/// `start = start0` or, with `per_row`, `rows[2 b]` and `rows[2 b + 1]`.
///
/// One unit per element of a token's `heads + 2 kv` heads (cube position x: the element's
/// block of `block`, y: the token, z: the batch row); no shared memory, no barrier.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn rope_write<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    rows: &Tensor<u32>,
    q_out: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    row0: u32,
    start0: u32,
    k_at: usize,
    v_at: usize,
    #[comptime] per_row: bool,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let batch = CUBE_POS_Z as usize;
    let s = CUBE_POS_Y as usize;
    let e = CUBE_POS_X as usize * block + UNIT_POS as usize;
    let heads = q.shape(1);
    let seq = q.shape(2);
    let dim = q.shape(3);
    let kv = k.shape(1);
    if e < (heads + 2 * kv) * dim {
        let h = e / dim;
        let i = e % dim;
        let mut row = row0 as usize + batch;
        let mut start = start0 as usize;
        if per_row {
            row = rows[2 * batch] as usize;
            start = rows[2 * batch + 1] as usize;
        }
        if h < heads + kv {
            let half = dim / 2;
            let mut partner = i + half;
            if i >= half {
                partner = i - half;
            }
            let t = batch % cos.shape(0);
            let c = f32::cast_from(cos[t * cos.stride(0) + s * cos.stride(2) + i * cos.stride(3)]);
            let sn = f32::cast_from(sin[t * sin.stride(0) + s * sin.stride(2) + i * sin.stride(3)]);
            if h < heads {
                let at = batch * q.stride(0) + h * q.stride(1) + s * q.stride(2);
                let x = f32::cast_from(q[at + i * q.stride(3)]);
                let y = f32::cast_from(q[at + partner * q.stride(3)]);
                q_out[((batch * heads + h) * seq + s) * dim + i] = F::cast_from(x * c + y * sn);
            } else {
                let kh = h - heads;
                let at = k_at + batch * k.stride(0) + kh * k.stride(1) + s * k.stride(2);
                let x = f32::cast_from(k[at + i * k.stride(3)]);
                let y = f32::cast_from(k[at + partner * k.stride(3)]);
                let to = row * keys.stride(0)
                    + kh * keys.stride(1)
                    + (start + s) * keys.stride(2)
                    + i * keys.stride(3);
                keys[to] = F::cast_from(x * c + y * sn);
            }
        } else {
            let vh = h - heads - kv;
            let at =
                v_at + batch * v.stride(0) + vh * v.stride(1) + s * v.stride(2) + i * v.stride(3);
            let to = row * values.stride(0)
                + vh * values.stride(1)
                + (start + s) * values.stride(2)
                + i * values.stride(3);
            values[to] = v[at];
        }
    }
}

/// RoPE, the KV-cache write and single-query attention of one decode step as one kernel:
/// for each batch row `b` of the unsplit projection `qkv: [b, 1, (heads + 2 kv) d]` (any
/// strides; each token's query heads, then its key heads, then its value heads), q and k
/// rotated as [`rope_write`] rotates them (by `cos, sin: [1 or b, 1, 1, d]`, rounded to the
/// element type), the key and value written into `keys, values: [slots, kv, n, d]` at row
/// `row0 + b`, position `pos`, and query head `h` attends over that row's positions `first..=
/// pos` of KV head `h / groups` (as [`attention`] without bias; the new position's key and
/// value are taken from shared memory, not read back) into the contiguous `out: [b, 1,
/// heads d]`.
///
/// Cube position x: the query head's index in its group (`groups` = the grid's x count), y:
/// the KV head, z: the batch row; one unit per dimension of the head (`d` at most the cube's
/// width). Every cube of a group rotates the group's key (units' work, no sync between
/// cubes); the group's cube 0 writes it and the value. Other cubes read only positions
/// before `pos`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn rope_attend<F: Float>(
    qkv: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    row0: u32,
    pos: u32,
    first: u32,
    scale: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let g = CUBE_POS_X as usize;
    let h = CUBE_POS_Y as usize;
    let b = CUBE_POS_Z as usize;
    let unit = UNIT_POS as usize;
    let groups = CUBE_COUNT_X as usize;
    let kv = keys.shape(1);
    let dim = keys.shape(3);
    let heads = groups * kv;
    let head = h * groups + g;
    let row = row0 as usize + b;
    let last = pos as usize;
    let at = b * qkv.stride(0);
    let step = qkv.stride(2);

    let mut query = SharedMemory::<f32>::new(block);
    let mut new_k = SharedMemory::<f32>::new(block);
    let mut new_v = SharedMemory::<f32>::new(block);
    if unit < dim {
        let half = dim / 2;
        let mut partner = unit + half;
        if unit >= half {
            partner = unit - half;
        }
        let t = b % cos.shape(0);
        let c = f32::cast_from(cos[t * cos.stride(0) + unit * cos.stride(3)]);
        let sn = f32::cast_from(sin[t * sin.stride(0) + unit * sin.stride(3)]);
        let qa = at + head * dim * step;
        let x = f32::cast_from(qkv[qa + unit * step]);
        let y = f32::cast_from(qkv[qa + partner * step]);
        query[unit] = f32::cast_from(F::cast_from(x * c + y * sn)) * scale;
        let ka = at + (heads + h) * dim * step;
        let kx = f32::cast_from(qkv[ka + unit * step]);
        let ky = f32::cast_from(qkv[ka + partner * step]);
        let k = F::cast_from(kx * c + ky * sn);
        let v = qkv[at + ((heads + kv + h) * dim + unit) * step];
        new_k[unit] = f32::cast_from(k);
        new_v[unit] = f32::cast_from(v);
        if g == 0 {
            keys[row * keys.stride(0)
                + h * keys.stride(1)
                + last * keys.stride(2)
                + unit * keys.stride(3)] = k;
            values[row * values.stride(0)
                + h * values.stride(1)
                + last * values.stride(2)
                + unit * values.stride(3)] = v;
        }
    }

    let k_at = row * keys.stride(0) + h * keys.stride(1);
    let v_at = row * values.stride(0) + h * values.stride(1);
    let (k_step, k_dim) = (keys.stride(2), keys.stride(3));
    let (v_step, v_dim) = (values.stride(2), values.stride(3));
    let mut weights = SharedMemory::<f32>::new(block);
    let mut scratch = SharedMemory::<f32>::new(block);
    let end = last + 1;
    let neg = f32::new(-3.0e38);
    let mut running_max = neg;
    let mut running_sum = 0.0f32;
    let mut acc = 0.0f32;
    sync_cube();

    let mut chunk = first as usize;
    while chunk < end {
        // As in `attention`: the floor past the end, no infinity literal.
        let key = chunk + unit;
        let mut score = neg;
        if key < end {
            let mut dot = 0.0f32;
            if key == last {
                for d in 0..dim {
                    dot += query[d] * new_k[d];
                }
            } else {
                let ka = k_at + key * k_step;
                for d in 0..dim {
                    dot += query[d] * f32::cast_from(keys[ka + d * k_dim]);
                }
            }
            score = dot;
        }
        scratch[unit] = score;
        let chunk_max = block_max(&mut scratch);
        let new_max = f32::max(running_max, chunk_max);
        let mut p = 0.0f32;
        if key < end {
            p = f32::exp(score - new_max);
        }
        weights[unit] = p;
        scratch[unit] = p;
        let chunk_sum = block_sum(&mut scratch);
        let rescale = f32::exp(running_max - new_max);
        running_sum = running_sum * rescale + chunk_sum;
        running_max = new_max;
        if unit < dim {
            let mut part = 0.0f32;
            let n = u32::min(block as u32, (end - chunk) as u32) as usize;
            for j in 0..n {
                let mut value = new_v[unit];
                if chunk + j != last {
                    value = f32::cast_from(values[v_at + (chunk + j) * v_step + unit * v_dim]);
                }
                part += weights[j] * value;
            }
            acc = acc * rescale + part;
        }
        sync_cube();
        chunk += block;
    }

    if unit < dim {
        let mut value = 0.0f32;
        if running_sum > 0.0 {
            value = acc / running_sum;
        }
        out[(b * heads + head) * dim + unit] = F::cast_from(value);
    }
}

/// A residual add folded into the RMSNorm that reads it: for each row of `x, y: [batch, seq,
/// hidden]` (any strides), `sum = x + y` (rounded to the element type, as an add of two
/// tensors is) into the contiguous `sum`, and RMSNorm of that sum into the contiguous `out`
/// (as [`rms_norm`]). One cube per row; each unit computes its elements' sums twice (for the
/// sum of squares, then for the output) instead of reading back what it wrote.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm<F: Float>(
    x: &Tensor<F>,
    y: &Tensor<F>,
    weight: &Tensor<F>,
    sum: &mut Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let unit = UNIT_POS as usize;
    let seq = x.shape(1);
    let hidden = x.shape(2);
    let x_row = (row / seq) * x.stride(0) + (row % seq) * x.stride(1);
    let y_row = (row / seq) * y.stride(0) + (row % seq) * y.stride(1);
    let (x_step, y_step) = (x.stride(2), y.stride(2));
    let out_row = row * hidden;

    let mut partial = SharedMemory::<f32>::new(block);
    let mut squares = 0.0f32;
    let mut i = unit;
    while i < hidden {
        let s = F::cast_from(
            f32::cast_from(x[x_row + i * x_step]) + f32::cast_from(y[y_row + i * y_step]),
        );
        sum[out_row + i] = s;
        let v = f32::cast_from(s);
        squares += v * v;
        i += block;
    }
    partial[unit] = squares;
    let total = block_sum(&mut partial);
    let inv = f32::inverse_sqrt(total / f32::cast_from(hidden) + eps);

    let w_step = weight.stride(0);
    let mut i = unit;
    while i < hidden {
        let s = F::cast_from(
            f32::cast_from(x[x_row + i * x_step]) + f32::cast_from(y[y_row + i * y_step]),
        );
        let v = f32::cast_from(s) * inv;
        out[out_row + i] = F::cast_from(v * f32::cast_from(weight[i * w_step]));
        i += block;
    }
}

/// A gated MLP's activation of one gate value `x`, in f32: SiLU `x sigmoid(x)`, or with
/// `gelu` tanh-GELU `0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x³)`, written as
/// `x sigmoid(2 u)` (1.595769 is `2 sqrt(2/pi)` to f32 precision). Both as `x / (1 +
/// exp(-t))`, which has no tanh to overflow: a large `-t` makes the exponential infinite and
/// the result a signed zero, never a NaN.
#[cube]
fn activation(x: f32, #[comptime] gelu: bool) -> f32 {
    let mut t = x;
    if gelu {
        t = 1.595_769_f32 * (x + 0.044715f32 * x * x * x);
    }
    x / (1.0f32 + f32::exp(0.0f32 - t))
}

/// A gated MLP's activation: for each row of `gate_up: [batch, seq, 2 inter]` (any strides;
/// the gate's `inter` features, then the up projection's), `out[row, i] = act(gate[i]) *
/// up[i]` into the contiguous `out: [batch, seq, inter]`, in f32, rounded once ([`activation`]:
/// SiLU, or tanh-GELU with `gelu`). One unit per output element (cube position x: the
/// element's block of `block`, y: the row); no shared memory, no barrier.
#[cube(launch_unchecked)]
pub fn gated<F: Float>(
    gate_up: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] gelu: bool,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_Y as usize;
    let i = CUBE_POS_X as usize * block + UNIT_POS as usize;
    let seq = gate_up.shape(1);
    let inter = gate_up.shape(2) / 2;
    if i < inter {
        let at = (row / seq) * gate_up.stride(0) + (row % seq) * gate_up.stride(1);
        let step = gate_up.stride(2);
        let gate = f32::cast_from(gate_up[at + i * step]);
        let up = f32::cast_from(gate_up[at + (inter + i) * step]);
        out[row * inter + i] = F::cast_from(activation(gate, gelu) * up);
    }
}

/// Where [`matvec`] finds its operands, as scalars: the kernel takes arrays, not tensors. An
/// array argument carries only its lengths, which go with the scalars in the launch's static
/// part (a grid constant on CUDA); a tensor's shapes and strides are dynamic metadata, which
/// cubecl-cuda 0.10 copies to the device at every launch (`create_with_data`: a pool
/// allocation and a host-to-device copy).
#[derive(CubeLaunch, CubeType)]
pub struct MatvecGeometry {
    /// Rows of `x` per batch row.
    pub seq: usize,
    /// Strides of `x` (batch row, row, feature).
    pub x_batch: usize,
    pub x_seq: usize,
    pub x_step: usize,
    /// Strides of `y` (read by the norm only).
    pub y_batch: usize,
    pub y_seq: usize,
    pub y_step: usize,
    /// Stride of the norm's `weight`.
    pub weight_step: usize,
    /// Rows of `w` (the features), its row's vectors and the vectors from row to row.
    pub inputs: usize,
    pub columns: usize,
    pub w_row: usize,
}

/// A decode step's matrix-vector product: `out[row, j] = sum_i a[row, i] w[i, j]` for the
/// few rows of `x: [batch, seq, ..]` (any strides) and `w: [in, out]` with rows a whole
/// number of vectors apart, into the contiguous `out: [batch, seq, out]`. The activations
/// `a` by the comptime prologue:
///
/// - plain: `a = x[.., i]`, `in` features (`y`, `weight` and `sum` are not read: any
///   tensor stands in);
/// - `gated`: `x` is a gated MLP's `gate_up: [batch, seq, 2 in]` and `a = act(gate[i]) *
///   up[i]` (as [`gated`] computes it, rounded to the element type as its output is);
/// - `norm`: `a` is [`add_rms_norm`] of `x + y` by `weight` (`in` features, at most
///   `max_in`), rounded as that kernel rounds its output; the cubes of column tile 0 also
///   write the sum `x + y` into the contiguous `sum: [batch, seq, in]`. Each cube computes
///   the row's norm into shared memory first.
///
/// `w` and `out` are read and written as vectors of `N` neighbouring columns (one load of 8
/// or 16 bytes per weight vector). Cube position x: a tile of `lanes` vectors of columns, y:
/// the row. Unit `(part, lane)` of the cube's `parts x lanes` adds the products of features
/// `part, part + parts, ..` with its vector's weights in f32, two features per turn (two
/// loads in flight), so that neighbouring units read neighbouring weights of one row of `w`
/// and every feature is read once per cube; the `parts` partial sums of a vector are added at
/// the end through shared memory. `lanes * parts` is the cube's width, `block`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn matvec<F: Float, N: Size>(
    x: &Array<F>,
    y: &Array<F>,
    weight: &Array<F>,
    w: &Array<Vector<F, N>>,
    sum: &mut Array<F>,
    out: &mut Array<Vector<F, N>>,
    geometry: MatvecGeometry,
    eps: f32,
    #[comptime] gated: bool,
    #[comptime] gelu: bool,
    #[comptime] norm: bool,
    #[comptime] lanes: usize,
    #[comptime] parts: usize,
    #[comptime] block: usize,
    #[comptime] max_in: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let lane = unit % lanes;
    let part = unit / lanes;
    let c = CUBE_POS_X as usize * lanes + lane;
    let columns = geometry.columns;
    let inputs = geometry.inputs;
    let w_row = geometry.w_row;
    let seq = geometry.seq;
    let at = (row / seq) * geometry.x_batch + (row % seq) * geometry.x_seq;
    let step = geometry.x_step;

    // The normed row (norm only; one element otherwise).
    let mut normed = SharedMemory::<f32>::new(comptime![if norm { max_in } else { 1 }]);
    if norm {
        let y_at = (row / seq) * geometry.y_batch + (row % seq) * geometry.y_seq;
        norm_row(
            x,
            y,
            weight,
            sum,
            &mut normed,
            row,
            inputs,
            eps,
            at,
            step,
            y_at,
            geometry.y_step,
            geometry.weight_step,
            CUBE_POS_X == 0,
            block,
        );
    }

    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut acc2 = Vector::<f32, N>::new(0.0f32);
    if c < columns {
        let mut i = part;
        while i < inputs {
            let wi = w[i * w_row + c];
            let k = i + parts;
            if k < inputs {
                let wk = w[k * w_row + c];
                acc2 += Vector::cast_from(wk)
                    * Vector::new(input(x, &normed, at, step, inputs, k, gated, gelu, norm));
            }
            acc += Vector::cast_from(wi)
                * Vector::new(input(x, &normed, at, step, inputs, i, gated, gelu, norm));
            i += 2 * parts;
        }
    }

    let mut partial = SharedMemory::<Vector<f32, N>>::new(block);
    partial[unit] = acc + acc2;
    sync_cube();
    if part == 0 && c < columns {
        let mut total = partial[lane];
        let mut p = 1usize;
        while p < parts {
            total += partial[p * lanes + lane];
            p += 1;
        }
        out[row * columns + c] = Vector::cast_from(total);
    }
}

/// The RMSNorm of `x + y`'s row (`x` at `at`, `step` apart; `y` at `y_at`, `y_step` apart;
/// `inputs` features) into `normed`, the sum rounded to the dtype as the add kernel rounds
/// it and the normed value as the norm kernel rounds its output; `writer` (one cube per
/// row) also writes the sum to the contiguous `sum` at `row * inputs`. Ends with the cube
/// synchronized.
#[cube]
#[allow(clippy::too_many_arguments)]
fn norm_row<F: Float>(
    x: &Array<F>,
    y: &Array<F>,
    weight: &Array<F>,
    sum: &mut Array<F>,
    normed: &mut SharedMemory<f32>,
    row: usize,
    inputs: usize,
    eps: f32,
    at: usize,
    step: usize,
    y_at: usize,
    y_step: usize,
    w_step: usize,
    writer: bool,
    #[comptime] block: usize,
) {
    let unit = UNIT_POS as usize;
    let mut squares = SharedMemory::<f32>::new(block);
    let mut own = 0.0f32;
    let mut i = unit;
    while i < inputs {
        let s =
            F::cast_from(f32::cast_from(x[at + i * step]) + f32::cast_from(y[y_at + i * y_step]));
        if writer {
            sum[row * inputs + i] = s;
        }
        let v = f32::cast_from(s);
        normed[i] = v;
        own += v * v;
        i += block;
    }
    squares[unit] = own;
    let total = block_sum(&mut squares);
    let inv = f32::inverse_sqrt(total / f32::cast_from(inputs) + eps);
    let mut i = unit;
    while i < inputs {
        let v = normed[i] * inv;
        normed[i] = f32::cast_from(F::cast_from(v * f32::cast_from(weight[i * w_step])));
        i += block;
    }
    sync_cube();
}

/// Activation `i` of [`matvec`]'s row at `at` (`step` apart) by its prologue.
#[cube]
#[allow(clippy::too_many_arguments)]
fn input<F: Float>(
    x: &Array<F>,
    normed: &SharedMemory<f32>,
    at: usize,
    step: usize,
    inputs: usize,
    i: usize,
    #[comptime] gated: bool,
    #[comptime] gelu: bool,
    #[comptime] norm: bool,
) -> f32 {
    if norm {
        normed[i]
    } else if gated {
        let gate = f32::cast_from(x[at + i * step]);
        let up = f32::cast_from(x[at + (inputs + i) * step]);
        f32::cast_from(F::cast_from(activation(gate, gelu) * up))
    } else {
        f32::cast_from(x[at + i * step])
    }
}

/// Where [`quantized_matvec`] finds its operands, as scalars (see [`MatvecGeometry`]).
#[derive(CubeLaunch, CubeType)]
pub struct QuantizedGeometry {
    /// Rows of the weight (the outputs) and vectors of words per row.
    pub outputs: usize,
    pub vectors: usize,
    /// Vectors of words and groups from weight row to weight row.
    pub w_row: usize,
    pub s_row: usize,
    /// Strides of `x` and `y` (row, feature) and of the norm's `weight`.
    pub x_row: usize,
    pub x_step: usize,
    pub y_row: usize,
    pub y_step: usize,
    pub weight_step: usize,
}

/// `out = x . dequantize(w)^T` for a weight kept quantized, `[outputs, inputs]` with
/// `value = scale[g] * u + min[g]` per group `g` of `group` values along a row: the `u` of a
/// row packed `32 / bits` per word, first in the low bits (`bits` 4 or 8), the words read as
/// vectors of `N` (4: 16 bytes per load); `scale` and `min` are f32 `[outputs, groups]`;
/// `x: [rows, inputs]` (`[rows, 2 inputs]` gated, rows and features at the strides of
/// `geometry`), `out: [rows, outputs]` contiguous, as `sum`. The prologues
/// are [`matvec`]'s: `gated` (the activation of `x`'s first half times its second) and
/// `norm` (the RMSNorm of `x + y` with `weight`, the sum written to `sum: [rows, inputs]`
/// by the cubes of the first output tile).
///
/// Cube position x: `block / units` output rows, y: the row of `x`. The `units` units of an
/// output row read its consecutive vectors of words (neighbouring units, neighbouring
/// vectors) and add, per word, `scale * sum(u x) + min * sum(x)` in f32; their partial sums
/// are added through shared memory.
///
/// `staged` (at most `stage_len` features with their padding): the cube first writes its
/// row's activations, rounded to `F` as the prologues round them, into shared memory, value
/// `i` at `i + pad * (i / 32)`. Neighbouring units read activations a vector of words apart
/// (32 values for 4-bit integers), so without the padding every unit of a warp would read
/// the same bank, and without the stage each would read `x` (or recompute the gated
/// activation) on its own: a 32-way split access per value. `pad` is 4 bytes' worth of `F`,
/// which puts the units of a warp in distinct banks (for 8-bit integers in f16, two units
/// share a bank).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn quantized_matvec<F: Float, N: Size>(
    x: &Array<F>,
    y: &Array<F>,
    weight: &Array<F>,
    packed: &Array<Vector<u32, N>>,
    scale: &Array<f32>,
    min: &Array<f32>,
    sum: &mut Array<F>,
    out: &mut Array<F>,
    geometry: QuantizedGeometry,
    eps: f32,
    #[comptime] bits: u32,
    #[comptime] group: usize,
    #[comptime] gated: bool,
    #[comptime] gelu: bool,
    #[comptime] norm: bool,
    #[comptime] units: usize,
    #[comptime] block: usize,
    #[comptime] max_in: usize,
    #[comptime] staged: bool,
    #[comptime] pad: usize,
    #[comptime] stage_len: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let lane = unit % units;
    let o = CUBE_POS_X as usize * (block / units) + unit / units;
    let outputs = geometry.outputs;
    let width = packed.vector_size();
    let vectors = geometry.vectors;
    let per_word = comptime![(32 / bits) as usize];
    let mask = comptime![(1u32 << bits) - 1];
    let inputs = vectors * width * per_word;
    let at = row * geometry.x_row;
    let step = geometry.x_step;

    // The normed row (norm only; one element otherwise).
    let mut normed = SharedMemory::<f32>::new(comptime![if norm { max_in } else { 1 }]);
    if norm {
        norm_row(
            x,
            y,
            weight,
            sum,
            &mut normed,
            row,
            inputs,
            eps,
            at,
            step,
            row * geometry.y_row,
            geometry.y_step,
            geometry.weight_step,
            CUBE_POS_X == 0,
            block,
        );
    }

    // The row's activations, padded (staged only; one element otherwise).
    let mut stage = SharedMemory::<F>::new(comptime![if staged { stage_len } else { 1 }]);
    if staged {
        let mut i = unit;
        while i < inputs {
            stage[i + pad * (i / 32)] =
                F::cast_from(input(x, &normed, at, step, inputs, i, gated, gelu, norm));
            i += block;
        }
        sync_cube();
    }

    let mut acc = 0.0f32;
    if o < outputs {
        let w_at = o * geometry.w_row;
        let s_at = o * geometry.s_row;
        let mut j = lane;
        while j < vectors {
            let words = packed[w_at + j];
            #[unroll]
            for k in 0..width {
                let word = words[k];
                let first = (j * width + k) * per_word;
                let g = s_at + first / group;
                // A word's values share their 32-value run: `per_word` divides 32.
                let padded = first + pad * (first / 32);
                let mut su = 0.0f32;
                let mut sx = 0.0f32;
                #[unroll]
                for t in 0..per_word {
                    let u = (word >> (t as u32 * bits)) & mask;
                    let xv = if staged {
                        f32::cast_from(stage[padded + t])
                    } else {
                        input(x, &normed, at, step, inputs, first + t, gated, gelu, norm)
                    };
                    su += f32::cast_from(u) * xv;
                    sx += xv;
                }
                acc += scale[g] * su + min[g] * sx;
            }
            j += units;
        }
    }

    let mut partial = SharedMemory::<f32>::new(block);
    partial[unit] = acc;
    sync_cube();
    // Halving within each output row's units (a run-time width, as in `block_sum`).
    let mut half = CUBE_DIM_X as usize / (block / units) / 2;
    while half > 0 {
        if lane < half {
            partial[unit] += partial[unit + half];
        }
        sync_cube();
        half /= 2;
    }
    if lane == 0 && o < outputs {
        out[row * outputs + o] = F::cast_from(partial[unit]);
    }
}

/// Rows of a weight kept quantized (the layout of [`quantized_matvec`]) in the run's dtype:
/// row `r` of `out: [n, inputs]` is weight row `ids[r]` (`all`: row `r`; an id past the last
/// row gives zeros). Each unit decodes one word; the cubes cover `n * words` units, counted
/// along x then y.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn dequantize_rows<F: Float>(
    packed: &Tensor<u32>,
    scale: &Tensor<f32>,
    min: &Tensor<f32>,
    ids: &Tensor<u32>,
    out: &mut Tensor<F>,
    #[comptime] bits: u32,
    #[comptime] group: usize,
    #[comptime] all: bool,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let index = (CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize) * block
        + UNIT_POS as usize;
    let words = packed.shape(1);
    let n = out.shape(0);
    let per_word = comptime![(32 / bits) as usize];
    let mask = comptime![(1u32 << bits) - 1];
    if index < n * words {
        let r = index / words;
        let w = index % words;
        let source = if all { r } else { ids[r] as usize };
        let first = w * per_word;
        let o_at = r * out.stride(0);
        if source < packed.shape(0) {
            let word = packed[source * packed.stride(0) + w];
            let g = source * scale.stride(0) + first / group;
            let (s, m) = (scale[g], min[g]);
            #[unroll]
            for t in 0..per_word {
                let u = (word >> (t as u32 * bits)) & mask;
                out[o_at + (first + t) * out.stride(1)] = F::cast_from(s * f32::cast_from(u) + m);
            }
        } else {
            #[unroll]
            for t in 0..per_word {
                out[o_at + (first + t) * out.stride(1)] = F::cast_from(0.0f32);
            }
        }
    }
}
