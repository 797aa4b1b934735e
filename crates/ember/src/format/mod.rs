//! Weight readers: one per checkpoint format, behind [`TensorStore`].

pub mod ct2;
pub mod cursor;
pub mod gguf;
pub mod gguf_store;
pub mod quant;
pub mod safetensors;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::nn::linear::{rows_per_part, Embedding, Native, QuantizedWeight, Weight};
use crate::nn::Fused;
use quant::Unpacked;

/// A checkpoint's tensors, addressed by the model's own (Hugging Face) names.
pub trait TensorStore {
    /// The checkpoint, for error messages.
    fn path(&self) -> &Path;
    /// Every tensor name.
    fn names(&self) -> Vec<String>;
    /// A tensor's row-major shape.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// A tensor's values as f32, row-major; `None` when absent.
    fn read(&self, name: &str) -> Result<Option<Vec<f32>>>;
    /// A quantized tensor's blocks, decoded but not dequantized; `None` when absent or not
    /// stored quantized.
    fn read_quantized(&self, name: &str) -> Result<Option<Unpacked>> {
        let _ = name;
        Ok(None)
    }
    /// A tensor stored as floats (f32 or f16) in the store's own type, unconverted and
    /// row-major (with the family's row order applied); `None` when absent, stored
    /// quantized, or in another float type (those are read widened, by
    /// [`TensorStore::read`]).
    fn read_float(&self, name: &str) -> Result<Option<StoredFloat>> {
        let _ = name;
        Ok(None)
    }
    /// Whether [`TensorStore::read_quantized_rows`] reads tensor `name` (stored quantized)
    /// in parts of rows.
    fn quantized_by_rows(&self, name: &str) -> bool {
        let _ = name;
        false
    }
    /// Rows `rows` of a quantized `[rows, cols]` tensor's blocks, decoded but not
    /// dequantized; `None` where [`TensorStore::quantized_by_rows`] is false.
    fn read_quantized_rows(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<Option<Unpacked>> {
        let _ = (name, rows);
        Ok(None)
    }
}

/// A float tensor's values as the checkpoint stores them ([`TensorStore::read_float`]).
#[derive(Debug, Clone)]
pub enum StoredFloat {
    /// f32 values.
    F32(Vec<f32>),
    /// f16 values.
    F16(Vec<half::f16>),
}

impl StoredFloat {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            StoredFloat::F32(v) => v.len(),
            StoredFloat::F16(v) => v.len(),
        }
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A quantized `[rows, cols]` tensor handed out in parts of whole rows
/// ([`QuantizedRows::part`]): a weight is packed part by part, so that its unpacked integers
/// (one byte per weight, four times a Q4 file's size) never exist whole: Gemma 3's
/// 262144 x 640 embedding would be 168 MB of them beside its packed copy.
pub struct QuantizedRows<'a> {
    source: RowSource<'a>,
    shape: [usize; 2],
}

enum RowSource<'a> {
    /// Read part by part ([`TensorStore::read_quantized_rows`]).
    Store {
        store: &'a dyn TensorStore,
        name: &'a str,
    },
    /// Unpacked whole, where the store cannot read parts of it.
    Whole(Unpacked),
}

impl QuantizedRows<'_> {
    /// A `[rows, cols]` tensor unpacked whole.
    pub fn whole(unpacked: Unpacked, shape: [usize; 2]) -> Self {
        Self {
            source: RowSource::Whole(unpacked),
            shape,
        }
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// Rows `range` (within the shape), unpacked.
    pub fn part(&self, range: std::ops::Range<usize>) -> Result<Unpacked> {
        match &self.source {
            RowSource::Whole(whole) => Ok(whole.rows(self.shape[1], range)),
            RowSource::Store { store, name } => {
                store.read_quantized_rows(name, range)?.ok_or_else(|| {
                    Error::model(
                        store.path(),
                        format!("{name}: its rows cannot be read in parts"),
                    )
                })
            }
        }
    }
}

/// Strict loading: hands out tensors by name, checks shapes, and reports what was left.
pub struct Loader<'a, B: Backend> {
    store: &'a dyn TensorStore,
    device: B::Device,
    dtype: DType,
    used: RefCell<BTreeSet<String>>,
    progress: RefCell<&'a mut dyn FnMut(usize, usize)>,
    total: usize,
    keep_quantized: bool,
    fused: Option<Fused<B>>,
}

/// A weight kept quantized ([`Loader::keep_quantized`]).
enum Kept<B: Backend> {
    /// In the backend's own form.
    Native(Native<B>),
    /// Portable, in parts of rows.
    Portable(Vec<QuantizedWeight<B>>),
}

impl<'a, B: Backend> Loader<'a, B> {
    /// Tensors go to `device` as `dtype`; `progress(done, total)` is called after each.
    pub fn new(
        store: &'a dyn TensorStore,
        device: &B::Device,
        dtype: DType,
        progress: &'a mut dyn FnMut(usize, usize),
    ) -> Self {
        let total = store.names().len();
        Self {
            store,
            device: device.clone(),
            dtype,
            used: RefCell::default(),
            progress: RefCell::new(progress),
            total,
            keep_quantized: false,
            fused: None,
        }
    }

    /// Whether projection weights and embeddings stored quantized stay quantized on the
    /// device (`[model] weights = "keep"`) instead of being dequantized at load.
    pub fn keep_quantized(mut self, keep: bool) -> Self {
        self.keep_quantized = keep;
        self
    }

    /// The backend's fused ops ([`crate::backend::Capabilities::fused`]), for the model to
    /// hold ([`Loader::fused`]); none by default.
    pub fn with_fused(mut self, fused: Option<Fused<B>>) -> Self {
        self.fused = fused;
        self
    }

    /// The fused ops the model runs with, if the backend has any ([`Loader::with_fused`]).
    pub fn fused(&self) -> Option<Fused<B>> {
        self.fused.clone()
    }

    /// The checkpoint's shape of `name`, checked against `shape`.
    fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let path = self.store.path();
        let found = self.store.shape(name).ok_or_else(|| Error::MissingTensor {
            path: path.into(),
            name: name.into(),
        })?;
        if found != shape {
            return Err(Error::TensorShape {
                path: path.into(),
                name: name.into(),
                expected: shape.to_vec(),
                found,
            });
        }
        Ok(())
    }

    fn mark_used(&self, name: &str) {
        let mut used = self.used.borrow_mut();
        used.insert(name.into());
        (self.progress.borrow_mut())(used.len(), self.total);
    }

    /// Tensor `name` (`[rows, cols]`) when it is stored quantized and kept so: in the
    /// backend's own form where its fused ops make one ([`FusedOps::quantized`]), else
    /// portable, in parts of rows small enough for one device buffer ([`rows_per_part`]).
    ///
    /// [`FusedOps::quantized`]: crate::nn::FusedOps::quantized
    fn quantized(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<Option<Kept<B>>> {
        if !self.keep_quantized {
            return Ok(None);
        }
        self.check(name, &[rows, cols])?;
        if let Some(native) = self.dense(name, [rows, cols])? {
            return Ok(Some(Kept::Native(native)));
        }
        let tensor = if self.store.quantized_by_rows(name) {
            QuantizedRows {
                source: RowSource::Store {
                    store: self.store,
                    name,
                },
                shape: [rows, cols],
            }
        } else {
            let Some(unpacked) = self.store.read_quantized(name)? else {
                return Ok(None);
            };
            QuantizedRows::whole(unpacked, [rows, cols])
        };
        self.mark_used(name);
        if let Some(fused) = &self.fused {
            if let Some(native) = fused.ops().quantized(&tensor, &self.device, self.dtype)? {
                return Ok(Some(Kept::Native(native)));
            }
        }
        let per = rows_per_part(rows, cols);
        let parts = (0..rows)
            .step_by(per)
            .map(|start| {
                let n = per.min(rows - start);
                let part = tensor.part(start..start + n)?;
                Ok(QuantizedWeight::new(
                    &part,
                    [n, cols],
                    &self.device,
                    self.dtype,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Kept::Portable(parts)))
    }

    /// Tensor `name` (`[rows, cols]`) in the backend's own form of float weights
    /// ([`FusedOps::dense`]) where the store has it as floats and the backend takes them;
    /// `None` otherwise (it is then read as any tensor is).
    ///
    /// [`FusedOps::dense`]: crate::nn::FusedOps::dense
    fn dense(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<Option<Native<B>>> {
        let Some(fused) = &self.fused else {
            return Ok(None);
        };
        if !fused.ops().takes_dense() {
            return Ok(None);
        }
        let Some(values) = self.store.read_float(name)? else {
            return Ok(None);
        };
        if values.len() != rows * cols {
            return Err(Error::TensorShape {
                path: self.store.path().into(),
                name: name.into(),
                expected: vec![rows, cols],
                found: vec![values.len()],
            });
        }
        let native = fused
            .ops()
            .dense(values, [rows, cols], &self.device, self.dtype)?;
        if native.is_some() {
            self.mark_used(name);
        }
        Ok(native)
    }

    /// A `[out, in]` projection weight: kept quantized where the checkpoint stores it so and
    /// the loader keeps ([`Loader::keep_quantized`]), else dense and transposed; split by
    /// output rows when larger than one device buffer takes ([`rows_per_part`]).
    pub fn weight(&self, name: &str, out_features: usize, in_features: usize) -> Result<Weight<B>> {
        match self.quantized(name, [out_features, in_features])? {
            Some(Kept::Native(native)) => return Ok(Weight::Native(native)),
            Some(Kept::Portable(mut parts)) => {
                return Ok(if parts.len() == 1 {
                    Weight::Quantized(parts.remove(0))
                } else {
                    Weight::Concat(parts.into_iter().map(Weight::Quantized).collect())
                })
            }
            None => {}
        }
        let values = self.values(name, &[out_features, in_features])?;
        let per = rows_per_part(out_features, in_features);
        let mut parts: Vec<Weight<B>> = (0..out_features)
            .step_by(per)
            .map(|start| {
                let rows = per.min(out_features - start);
                let part = &values[start * in_features..(start + rows) * in_features];
                Weight::Dense(self.transposed(part, rows, in_features))
            })
            .collect();
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Weight::Concat(parts)
        })
    }

    /// A `[vocab, hidden]` token embedding, kept quantized like [`Loader::weight`], in parts
    /// of rows when larger than one device buffer takes.
    pub fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding<B>> {
        match self.quantized(name, [vocab, hidden])? {
            Some(Kept::Native(native)) => return Ok(Embedding::Native(native)),
            Some(Kept::Portable(mut parts)) => {
                return Ok(if parts.len() == 1 {
                    Embedding::Quantized(parts.remove(0))
                } else {
                    Embedding::Parts(parts.into_iter().map(Embedding::Quantized).collect())
                })
            }
            None => {}
        }
        let values = self.values(name, &[vocab, hidden])?;
        let per = rows_per_part(vocab, hidden);
        let mut parts: Vec<Embedding<B>> = (0..vocab)
            .step_by(per)
            .map(|start| {
                let rows = per.min(vocab - start);
                let part = values[start * hidden..(start + rows) * hidden].to_vec();
                Embedding::Dense(Tensor::from_data(
                    TensorData::new(part, [rows, hidden]),
                    (&self.device, self.dtype),
                ))
            })
            .collect();
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Embedding::Parts(parts)
        })
    }

    /// The f32 values of `name`, checked against `shape`.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check(name, shape)?;
        let values = self.store.read(name)?.ok_or_else(|| Error::MissingTensor {
            path: self.store.path().into(),
            name: name.into(),
        })?;
        self.mark_used(name);
        Ok(values)
    }

    /// Whether the checkpoint has `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.store.shape(name).is_some()
    }

    /// Marks a tensor as consumed without loading it (metadata-like tensors).
    pub fn skip(&self, name: &str) {
        self.used.borrow_mut().insert(name.into());
    }

    /// A tensor on the device, in the run's dtype.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let values = self.values(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            (&self.device, self.dtype),
        ))
    }

    /// A `[out, in]` linear weight, returned transposed to `[in, out]` for `x.matmul(w)`.
    pub fn linear(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Tensor<B, 2>> {
        let values = self.values(name, &[out_features, in_features])?;
        Ok(self.transposed(&values, out_features, in_features))
    }

    /// `values` (`[out, in]`) transposed to `[in, out]` on the device.
    fn transposed(&self, values: &[f32], out_features: usize, in_features: usize) -> Tensor<B, 2> {
        // Row `i` of the transpose is column `i` of the weight; rows are filled in parallel.
        let mut t = vec![0f32; values.len()];
        t.par_chunks_mut(out_features)
            .enumerate()
            .for_each(|(i, row)| {
                for (o, slot) in row.iter_mut().enumerate() {
                    *slot = values[o * in_features + i];
                }
            });
        Tensor::from_data(
            TensorData::new(t, [in_features, out_features]),
            (&self.device, self.dtype),
        )
    }

    /// Fails, naming them, if any tensors were never asked for.
    pub fn finish(self) -> Result<()> {
        let used = self.used.into_inner();
        let mut unused: Vec<String> = self
            .store
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(Error::UnusedTensors {
            path: self.store.path().into(),
            names: unused,
        })
    }
}
