//! What flex runs beyond burn's ops: products with quantized weights on `ember-kernels`'
//! block layouts (`[model] weights = "keep"`), instead of dequantizing the weight with
//! burn ops at every use (docs/performance.md, change 14), and KV cache writes in place
//! (change 15).

use std::any::Any;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use ember::format::QuantizedRows;
use ember::nn::linear::{Native, NativeQuantized};
use ember::nn::FusedOps;
use ember_kernels::{Groups, Inputs, Isa, QuantMatrix, QUAD};

/// Flex's fused ops: quantized weights and in-place cache writes (its norms, attention and
/// projections are burn's ops).
#[derive(Debug, Clone, Copy)]
pub struct FlexFused {
    inputs: Inputs,
}

impl FlexFused {
    /// Products taking their inputs as `inputs` says (`backend.kernel_inputs`).
    pub fn new(inputs: Inputs) -> Self {
        Self { inputs }
    }
}

impl Default for FlexFused {
    /// The inputs `EMBER_KERNEL_INPUTS` names, else 8-bit ([`Inputs::from_env`]).
    fn default() -> Self {
        Self::new(Inputs::from_env())
    }
}

type B = crate::Backend;

impl FusedOps<B> for FlexFused {
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
        Tensor::<B, 2>::from_data(TensorData::new(values, shape), (&self.device, DType::F32))
            .cast(self.dtype)
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
        let ids: Vec<i64> = ids.into_data().iter::<i64>().collect();
        let cols = self.matrix.cols();
        let mut out = vec![0f32; ids.len() * cols];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
            if let Some(r) = usize::try_from(id).ok().filter(|&r| r < self.matrix.rows()) {
                self.matrix.dequantize_row(r, row);
            }
        }
        self.tensor(out, [ids.len(), cols])
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
