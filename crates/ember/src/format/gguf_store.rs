//! A llama.cpp GGUF file seen through Hugging Face tensor names: one rename table per family
//! and the family's fix for what llama.cpp's converter changed in the values.

use std::path::Path;

use super::gguf::GgufFile;
use super::TensorStore;
use crate::error::{Error, Result};

/// Hugging Face name -> llama.cpp name pairs.
pub type NameTable = &'static [(&'static str, &'static str)];

/// Undoes a converter's change to one tensor: `(hf_name, shape, values) -> values`.
pub type Fix<'a> = Box<dyn Fn(&str, &[usize], Vec<f32>) -> Vec<f32> + 'a>;

/// A GGUF file's tensors under Hugging Face names.
pub struct GgufStore<'a> {
    file: &'a GgufFile,
    /// Tensors outside the layers (`model.norm.weight` -> `output_norm.weight`).
    names: NameTable,
    /// Tensors inside `model.layers.N.` / `blk.N.`.
    layer_names: NameTable,
    fix: Fix<'a>,
}

impl<'a> GgufStore<'a> {
    /// `file` renamed by the two tables, each tensor's values passed through `fix`.
    pub fn new(file: &'a GgufFile, names: NameTable, layer_names: NameTable, fix: Fix<'a>) -> Self {
        Self {
            file,
            names,
            layer_names,
            fix,
        }
    }

    fn to_gguf(&self, hf: &str) -> Option<String> {
        if let Some((_, g)) = self.names.iter().find(|(h, _)| *h == hf) {
            return Some((*g).into());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (index, name) = rest.split_once('.')?;
        let (_, g) = self.layer_names.iter().find(|(h, _)| *h == name)?;
        Some(format!("blk.{index}.{g}"))
    }

    fn to_hf(&self, gguf: &str) -> String {
        if let Some((h, _)) = self.names.iter().find(|(_, g)| *g == gguf) {
            return (*h).into();
        }
        let mapped = gguf.strip_prefix("blk.").and_then(|rest| {
            let (index, name) = rest.split_once('.')?;
            let (h, _) = self.layer_names.iter().find(|(_, g)| *g == name)?;
            Some(format!("model.layers.{index}.{h}"))
        });
        mapped.unwrap_or_else(|| gguf.into())
    }
}

impl TensorStore for GgufStore<'_> {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.file
            .tensors()
            .iter()
            .map(|t| self.to_hf(&t.name))
            .collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file.tensor(&self.to_gguf(name)?).map(|t| t.shape())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let Some(info) = self.to_gguf(name).and_then(|g| self.file.tensor(&g)) else {
            return Ok(None);
        };
        let values = self.file.dequantize(info).map_err(|e| Error::Gguf {
            path: self.file.path().into(),
            error: e,
        })?;
        Ok(Some((self.fix)(name, &info.shape(), values)))
    }
}
