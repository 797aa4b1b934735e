//! Weights kept quantized on the GPU (`[model] weights = "keep"`, [`FusedOps::quantized`]):
//! the GGUF blocks' integers packed into 32-bit words (4 bits each for Q2-Q4 types, 8 for
//! Q5-Q8), with one f32 scale and one f32 offset per group, as [`Unpacked`] decodes them.
//! A decode step's product is one matrix-vector kernel on those words
//! ([`kernels::quantized_matvec`]: a Q8_0 weight reads 1.25 bytes per value and a Q4_0 one
//! 0.75, against 2 for f16); a prompt's product dequantizes the weight into the run's dtype,
//! in parts of rows, for burn's matmul; a looked-up embedding row is dequantized alone
//! ([`kernels::dequantize_rows`]).
//!
//! [`FusedOps::quantized`]: ember::nn::FusedOps::quantized

use std::any::Any;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::{BasicOps, DType, TensorData, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::{CubeCount, CubeDim};
use ember::format::quant::Unpacked;
use ember::format::QuantizedRows;
use ember::nn::linear::{rows_per_part, Native, NativeQuantized, MAX_TENSOR_ELEMENTS};

use crate::kernels::{self, BLOCK};
use crate::{
    float, float_dtype, output, output_of, register, CubeHost, Prologue, MAX_MATVEC_ROWS,
    MAX_NORM_FEATURES,
};
use ember::nn::Gate;

/// Units per output row of [`kernels::quantized_matvec`]: a cube of [`BLOCK`] units computes
/// `BLOCK / UNITS` output rows.
const UNITS: usize = 32;

/// Words per vector load of [`kernels::quantized_matvec`] (16 bytes).
const WORDS: usize = 4;

/// Bytes of activations [`kernels::quantized_matvec`] stages in shared memory (without its
/// padding): 8192 features in f16, 4096 in f32. With the norm's row and the partial sums,
/// a cube's shared memory stays under 32 KiB, Metal's limit for a threadgroup.
pub const STAGE_BYTES: usize = 16 << 10;

/// Whether [`kernels::quantized_matvec`] stages `inputs` activations of `dtype`, its padding
/// (4 bytes' worth of the element) and the staged row's comptime length.
fn stage(dtype: DType, inputs: usize) -> (bool, usize, usize) {
    let size = dtype.size().max(1);
    let features = STAGE_BYTES / size;
    let pad = (4 / size).max(1);
    (inputs <= features, pad, features + pad * features / 32)
}

/// Rows of activations, `[n, features]`.
type Rows<B> = Tensor<B, 2>;

/// The norm prologue's `y` (added to `x`) and weight.
type NormInputs<'a, B> = (&'a Rows<B>, &'a Tensor<B, 1>);

/// A `[outputs, inputs]` weight kept quantized on a CubeCL device.
pub struct CubeQuantized<B: CubeHost> {
    /// `[outputs, words]`, u32: the integers of a row, `32 / bits` per word.
    packed: Tensor<B, 2, Int>,
    /// `[outputs, groups]`, f32.
    scale: Tensor<B, 2>,
    /// `[outputs, groups]`, f32.
    min: Tensor<B, 2>,
    /// Bits per packed integer: 4 or 8.
    bits: u32,
    group: usize,
    shape: [usize; 2],
    dtype: DType,
}

/// The cubes of [`kernels::quantized_matvec`] along x for a weight of `rows` rows, when a
/// `[rows, cols]` weight of `bits`-bit integers fits the kernels: its words in one buffer of
/// portable size ([`MAX_TENSOR_ELEMENTS`]), the cubes within the portable 65535.
fn row_cubes(rows: usize, cols: usize, bits: u32) -> Option<u32> {
    let words = rows.checked_mul(cols)? / (32 / bits) as usize;
    let cubes = u32::try_from(rows.div_ceil(BLOCK / UNITS)).ok()?;
    (words <= MAX_TENSOR_ELEMENTS && cubes <= 65535).then_some(cubes)
}

/// Bits per packed integer for integers of `bits` bits, or `None` past 8.
fn packed_bits(bits: u32) -> Option<u32> {
    match bits {
        1..=4 => Some(4),
        5..=8 => Some(8),
        _ => None,
    }
}

/// Rows `range` of `t`: `t` itself when that is all of them (an embedding's lookup, every
/// token: no slice op in the stream), else a view.
fn rows_in<B: Backend, K: BasicOps<B>>(
    t: &Tensor<B, 2, K>,
    range: &std::ops::Range<usize>,
) -> Tensor<B, 2, K> {
    if *range == (0..t.dims()[0]) {
        t.clone()
    } else {
        t.clone().narrow(0, range.start, range.len())
    }
}

/// Appends `part`'s rows of `cols` integers to `words`, `32 / bits` per word, the first in
/// the low bits.
fn pack(part: &Unpacked, cols: usize, bits: u32, words: &mut Vec<u32>) {
    let per_word = (32 / bits) as usize;
    for row in part.u.chunks_exact(cols) {
        words.extend(row.chunks_exact(per_word).map(|digits| {
            digits
                .iter()
                .rev()
                .fold(0u32, |acc, &u| (acc << bits) | u32::from(u))
        }));
    }
}

impl<R, B> CubeQuantized<B>
where
    R: CubeRuntime,
    B: CubeHost<Runtime = R>,
{
    /// `tensor` packed on `device` (read in parts of about 8 MiB of integers), computing in
    /// `dtype`; `None` where the kernels do not take it: integers past 8 bits, groups or rows
    /// that are not whole vectors of words, a packed weight past one buffer's portable size
    /// ([`MAX_TENSOR_ELEMENTS`] words), or a grid past the portable limits.
    pub fn load(
        tensor: &QuantizedRows<'_>,
        device: &burn::tensor::Device<B>,
        dtype: DType,
    ) -> ember::Result<Option<Self>> {
        let [rows, cols] = tensor.shape();
        if !float_dtype(dtype) || rows == 0 || cols == 0 {
            return Ok(None);
        }
        let per = ((8 << 20) / cols).max(1);
        let (mut words, mut scale, mut min) = (Vec::new(), Vec::new(), Vec::new());
        let mut layout: Option<(u32, usize)> = None;
        for start in (0..rows).step_by(per) {
            let part = tensor.part(start..(start + per).min(rows))?;
            let Some(bits) = packed_bits(part.bits) else {
                return Ok(None);
            };
            let per_word = (32 / bits) as usize;
            let fits = part.group > 0
                && part.group.is_multiple_of(per_word)
                && cols.is_multiple_of(part.group)
                && cols.is_multiple_of(per_word * WORDS);
            if !fits || layout.is_some_and(|l| l != (bits, part.group)) {
                return Ok(None);
            }
            layout = Some((bits, part.group));
            if words.is_empty() {
                if row_cubes(rows, cols, bits).is_none() {
                    return Ok(None);
                }
                words.reserve_exact(rows * cols / per_word);
            }
            pack(&part, cols, bits, &mut words);
            scale.extend_from_slice(&part.scale);
            min.extend_from_slice(&part.min);
        }
        let Some((bits, group)) = layout else {
            return Ok(None);
        };
        let per_row = cols * bits as usize / 32;
        let groups = cols / group;
        let f32_tensor = |values: Vec<f32>| {
            Tensor::from_data(
                TensorData::new(values, [rows, groups]),
                (device, DType::F32),
            )
        };
        Ok(Some(Self {
            packed: Tensor::from_data(
                TensorData::new(words, [rows, per_row]),
                (device, DType::U32),
            ),
            scale: f32_tensor(scale),
            min: f32_tensor(min),
            bits,
            group,
            shape: [rows, cols],
            dtype,
        }))
    }

    /// [`kernels::quantized_matvec`] as a registered op: `x: [n, inputs]` (`[n, 2 inputs]`
    /// gated) through `prologue` times the weight's transpose, and for the norm the sum `x +
    /// y`; `None` where it does not apply (more than [`MAX_MATVEC_ROWS`] rows, another
    /// dtype, shapes that do not match, a norm over more than [`MAX_NORM_FEATURES`]).
    fn matvec(
        &self,
        x: &Tensor<B, 2>,
        norm: Option<NormInputs<'_, B>>,
        prologue: Prologue,
    ) -> Option<[Rows<B>; 2]> {
        let [n, features] = x.dims();
        let [outputs, inputs] = self.shape;
        let wanted = match prologue {
            Prologue::Gated(_) => 2 * inputs,
            _ => inputs,
        };
        if x.dtype() != self.dtype || features != wanted || n == 0 || n > MAX_MATVEC_ROWS {
            return None;
        }
        // The norm's inputs (`x` stands in where there is none: the kernel does not read it).
        let (y, weight) = match (prologue, norm) {
            (Prologue::Norm(_), Some((y, weight))) => {
                let same = y.dtype() == self.dtype && weight.dtype() == self.dtype;
                if !same
                    || y.dims() != [n, inputs]
                    || weight.dims() != [inputs]
                    || inputs > MAX_NORM_FEATURES
                {
                    return None;
                }
                (float(y)?, float(weight)?)
            }
            (Prologue::Norm(_), None) => return None,
            _ => (float(x)?, float(x)?),
        };
        let launch = Launch {
            grid: (
                u32::try_from(outputs.div_ceil(BLOCK / UNITS)).ok()?,
                n as u32,
            ),
            bits: self.bits,
            group: self.group,
            prologue,
            shape: [n, outputs, inputs],
        };
        let inputs = [
            float(x)?,
            y,
            weight,
            B::int_input(self.packed.clone().into_primitive()),
            float(&self.scale)?,
            float(&self.min)?,
        ];
        let dtype = self.dtype;
        let [sum, out] = if matches!(prologue, Prologue::Norm(_)) {
            B::launch(
                "ember.add_rms_norm_quantized_matvec",
                inputs,
                [(vec![n, launch.shape[2]], dtype), (vec![n, outputs], dtype)],
                move |t| launch.run(t),
            )
        } else {
            let out = register::<R, B, 6>(
                "ember.quantized_matvec",
                inputs,
                vec![n, outputs],
                dtype,
                move |t| {
                    let [_, out] = launch.run(t);
                    out
                },
            );
            [out.clone(), out]
        };
        let float = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        Some([float(sum), float(out)])
    }

    /// Rows `range` dequantized (`ids` `None`), or the rows `ids` names: `[n, inputs]` in
    /// the run's dtype, by [`kernels::dequantize_rows`].
    fn dequantize(
        &self,
        range: std::ops::Range<usize>,
        ids: Option<Tensor<B, 1, Int>>,
    ) -> Option<Tensor<B, 2>> {
        let inputs = self.shape[1];
        if range.is_empty() {
            return None;
        }
        let packed = rows_in(&self.packed, &range);
        let (scale, min) = (rows_in(&self.scale, &range), rows_in(&self.min, &range));
        let all = ids.is_none();
        let ids = match ids {
            Some(ids) if matches!(ids.dtype(), DType::U32 | DType::I32) => ids,
            Some(ids) => ids.cast(DType::I32),
            // A stand-in the kernel does not read.
            None => packed.clone().narrow(0, 0, 1).reshape([-1]),
        };
        let n = if all { range.len() } else { ids.dims()[0] };
        let words = inputs * self.bits as usize / 32;
        let cubes = n.checked_mul(words)?.div_ceil(BLOCK);
        if n == 0 || cubes == 0 {
            return None;
        }
        let grid = (
            u32::try_from(cubes.min(65535)).ok()?,
            u32::try_from(cubes.div_ceil(65535))
                .ok()
                .filter(|&y| y <= 65535)?,
        );
        let (bits, group, dtype) = (self.bits, self.group, self.dtype);
        let out = register::<R, B, 4>(
            "ember.dequantize_rows",
            [
                B::int_input(packed.into_primitive()),
                float(&scale)?,
                float(&min)?,
                B::int_input(ids.into_primitive()),
            ],
            vec![n, inputs],
            dtype,
            move |[packed, scale, min, ids]| {
                let out = output_of(&scale, vec![n, inputs], dtype);
                let client = scale.client.clone();
                // SAFETY: `packed` [rows, words] u32, `scale` and `min` [rows, inputs / group]
                // f32; each unit below n * words decodes word `w` of source row `ids[r]` (or
                // `r`), read only when below `rows`, and writes `out` (allocated here, [n,
                // inputs]) at `r, w * (32 / bits) + t`, below `inputs`; `ids` holds `n` ids
                // when read.
                unsafe {
                    kernels::dequantize_rows::launch_unchecked::<R>(
                        &client,
                        CubeCount::Static(grid.0, grid.1, 1),
                        CubeDim::new_1d(BLOCK as u32),
                        packed.into_tensor_arg(),
                        scale.into_tensor_arg(),
                        min.into_tensor_arg(),
                        ids.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        bits,
                        group,
                        all,
                        BLOCK,
                        dtype.into(),
                    );
                }
                out
            },
        );
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }
}

/// A checked [`kernels::quantized_matvec`] launch.
#[derive(Debug, Clone, Copy)]
struct Launch {
    grid: (u32, u32),
    bits: u32,
    group: usize,
    prologue: Prologue,
    /// Rows, outputs, inputs.
    shape: [usize; 3],
}

impl Launch {
    /// Launches the kernel (when the stream reaches the op) on `[x, y, weight, packed,
    /// scale, min]`: `[sum, out]`, the sum a stand-in (`out`) without the norm.
    fn run<R: CubeRuntime>(
        &self,
        [x, y, weight, packed, scale, min]: [CubeTensor<R>; 6],
    ) -> [CubeTensor<R>; 2] {
        let [n, outputs, inputs] = self.shape;
        let out = output(&x, vec![n, outputs]);
        let (gated, gelu, norm, eps) = self.prologue.flags();
        let sum = if norm {
            output(&x, vec![n, inputs])
        } else {
            out.clone()
        };
        let dtype = x.dtype;
        let (staged, pad, stage_len) = stage(dtype, inputs);
        let client = x.client.clone();
        let words = packed.meta.shape()[1];
        let geometry = kernels::QuantizedGeometryLaunch::new(
            outputs,
            words / WORDS,
            packed.meta.strides()[0] / WORDS,
            scale.meta.strides()[0],
            x.meta.strides()[0],
            x.meta.strides()[1],
            y.meta.strides()[0],
            y.meta.strides()[1],
            weight.meta.strides()[0],
        );
        // SAFETY: `x` is [n, inputs] ([n, 2 inputs] gated; `y` [n, inputs] and `weight`
        // [inputs] for the norm, inputs at most MAX_NORM_FEATURES, the shared row's length:
        // checked by `CubeQuantized::matvec`); `packed` [outputs, inputs / (32 / bits)] u32
        // with whole vectors of WORDS words per row (checked at load), read as vectors below
        // its rows' length, rows below `outputs`; `scale` and `min` [outputs, inputs /
        // group], read at groups below that; the grid is (outputs / rows per cube rounded
        // up, n), units past `outputs` read nothing and write nothing; `out` ([n, outputs])
        // and `sum` ([n, inputs], written by the norm only) are allocated here; staged, the
        // padded row (`inputs + pad * inputs / 32`) fits `stage_len` (`stage`).
        unsafe {
            kernels::quantized_matvec::launch_unchecked::<R>(
                &client,
                CubeCount::Static(self.grid.0, self.grid.1, 1),
                CubeDim::new_1d(BLOCK as u32),
                WORDS,
                x.into_array_arg(),
                y.into_array_arg(),
                weight.into_array_arg(),
                packed.into_array_arg(),
                scale.into_array_arg(),
                min.into_array_arg(),
                sum.clone().into_array_arg(),
                out.clone().into_array_arg(),
                geometry,
                eps,
                self.bits,
                self.group,
                gated,
                gelu,
                norm,
                UNITS,
                BLOCK,
                MAX_NORM_FEATURES,
                staged,
                pad,
                stage_len,
                dtype.into(),
            );
        }
        [sum, out]
    }
}

impl<R, B> NativeQuantized<B> for CubeQuantized<B>
where
    R: CubeRuntime,
    B: CubeHost<Runtime = R>,
{
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some([_, y]) = self.matvec(&x, None, Prologue::Plain) {
            return y;
        }
        // A prompt: the weight dequantized in parts of rows that fit one buffer, each
        // multiplied by burn's matmul.
        let [outputs, inputs] = self.shape;
        let x = x.cast(self.dtype);
        let per = rows_per_part(outputs, inputs);
        let parts: Vec<_> = (0..outputs)
            .step_by(per)
            .map(|start| {
                let range = start..(start + per).min(outputs);
                match self.dequantize(range.clone(), None) {
                    Some(w) => x.clone().matmul(w.transpose()),
                    None => Tensor::zeros([x.dims()[0], range.len()], (&x.device(), self.dtype)),
                }
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    fn add_rms_norm_forward(
        &self,
        x: &Tensor<B, 2>,
        y: &Tensor<B, 2>,
        weight: &Tensor<B, 1>,
        eps: f64,
    ) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
        let [sum, out] = self.matvec(x, Some((y, weight)), Prologue::Norm(eps as f32))?;
        Some((sum, out))
    }

    fn gated_forward(&self, gate_up: &Tensor<B, 2>, act: Gate) -> Option<Tensor<B, 2>> {
        let [_, out] = self.matvec(gate_up, None, Prologue::Gated(act))?;
        Some(out)
    }

    fn rows(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let n = ids.dims()[0];
        let device = ids.device();
        self.dequantize(0..self.shape[0], Some(ids))
            .unwrap_or_else(|| Tensor::zeros([n, self.shape[1]], (&device, self.dtype)))
    }

    fn shape(&self) -> [usize; 2] {
        self.shape
    }

    fn bytes(&self) -> usize {
        let [rows, cols] = self.shape;
        rows * cols * self.bits as usize / 8 + 2 * rows * (cols / self.group) * 4
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn stack(&self, others: &[&Native<B>]) -> Option<Native<B>> {
        let mut parts = vec![self];
        for other in others {
            parts.push(other.0.as_any().downcast_ref::<Self>()?);
        }
        let alike = parts.iter().all(|p| {
            (p.bits, p.group, p.shape[1], p.dtype)
                == (self.bits, self.group, self.shape[1], self.dtype)
        });
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        if !alike || row_cubes(rows, self.shape[1], self.bits).is_none() {
            return None;
        }
        Some(Native(Arc::new(Self {
            packed: Tensor::cat(parts.iter().map(|p| p.packed.clone()).collect(), 0),
            scale: Tensor::cat(parts.iter().map(|p| p.scale.clone()).collect(), 0),
            min: Tensor::cat(parts.iter().map(|p| p.min.clone()).collect(), 0),
            shape: [rows, self.shape[1]],
            ..*self
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
