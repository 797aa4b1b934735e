//! Weight readers: one per checkpoint format, behind [`TensorStore`].

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
}

/// Strict loading: hands out tensors by name, checks shapes, and reports what was left.
pub struct Loader<'a, B: Backend> {
    store: &'a dyn TensorStore,
    device: B::Device,
    dtype: DType,
    used: RefCell<BTreeSet<String>>,
    progress: RefCell<&'a mut dyn FnMut(usize, usize)>,
    total: usize,
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
        }
    }

    /// The f32 values of `name`, checked against `shape`.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
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
        let values = self.store.read(name)?.ok_or_else(|| Error::MissingTensor {
            path: path.into(),
            name: name.into(),
        })?;
        let mut used = self.used.borrow_mut();
        used.insert(name.into());
        (self.progress.borrow_mut())(used.len(), self.total);
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
        // Row `i` of the transpose is column `i` of the weight; rows are filled in parallel.
        let mut t = vec![0f32; values.len()];
        t.par_chunks_mut(out_features)
            .enumerate()
            .for_each(|(i, row)| {
                for (o, slot) in row.iter_mut().enumerate() {
                    *slot = values[o * in_features + i];
                }
            });
        Ok(Tensor::from_data(
            TensorData::new(t, [in_features, out_features]),
            (&self.device, self.dtype),
        ))
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
