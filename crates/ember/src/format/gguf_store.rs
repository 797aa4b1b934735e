//! A llama.cpp GGUF file seen through Hugging Face tensor names: one rename table per family
//! and the family's fixes for what llama.cpp's converter changed.

use std::path::Path;

use super::gguf::{GgmlType, GgufFile, TensorInfo};
use super::quant::Unpacked;
use super::{StoredFloat, TensorStore};
use crate::error::{Error, Result};

/// Hugging Face name -> llama.cpp name pairs.
pub type NameTable = &'static [(&'static str, &'static str)];

/// For a tensor name and shape, the stored row each row of the Hugging Face tensor is.
pub type RowOrder<'a> = Box<dyn Fn(&str, &[usize]) -> Option<Vec<usize>> + 'a>;

/// What llama.cpp's converter changed in a family's tensors, to be undone.
pub struct Fixes<'a> {
    /// The row order to restore for a tensor of a shape (`Some(order)`: row `i` of the
    /// Hugging Face tensor is row `order[i]` of the stored one). Llama's Q/K rows.
    pub rows: RowOrder<'a>,
    /// A constant the converter added to a tensor's values (Gemma's norms: 1).
    pub offset: Box<dyn Fn(&str) -> f32 + 'a>,
}

impl Fixes<'_> {
    /// Nothing to undo.
    pub fn none() -> Self {
        Self {
            rows: Box::new(|_, _| None),
            offset: Box::new(|_| 0.0),
        }
    }
}

/// A GGUF file's tensors under Hugging Face names.
pub struct GgufStore<'a> {
    file: &'a GgufFile,
    /// Tensors outside the layers (`model.norm.weight` -> `output_norm.weight`).
    names: NameTable,
    /// Tensors inside `model.layers.N.` / `blk.N.`.
    layer_names: NameTable,
    fixes: Fixes<'a>,
}

impl<'a> GgufStore<'a> {
    /// `file` renamed by the two tables, with `fixes` undone.
    pub fn new(
        file: &'a GgufFile,
        names: NameTable,
        layer_names: NameTable,
        fixes: Fixes<'a>,
    ) -> Self {
        Self {
            file,
            names,
            layer_names,
            fixes,
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
        self.file.release(info);
        let mut values = self.in_family_order(name, &info.shape(), values);
        let offset = (self.fixes.offset)(name);
        if offset != 0.0 {
            values.iter_mut().for_each(|v| *v -= offset);
        }
        Ok(Some(values))
    }

    fn read_quantized(&self, name: &str) -> Result<Option<Unpacked>> {
        let Some(info) = self.to_gguf(name).and_then(|g| self.file.tensor(&g)) else {
            return Ok(None);
        };
        let Some(mut unpacked) = self.file.unpack(info) else {
            return Ok(None);
        };
        self.file.release(info);
        let shape = info.shape();
        if let Some(order) = (self.fixes.rows)(name, &shape) {
            unpacked.permute_rows(shape.iter().skip(1).product(), &order);
        }
        let offset = (self.fixes.offset)(name);
        if offset != 0.0 {
            unpacked.min.iter_mut().for_each(|m| *m -= offset);
        }
        Ok(Some(unpacked))
    }

    fn read_float(&self, name: &str) -> Result<Option<StoredFloat>> {
        let Some(info) = self.to_gguf(name).and_then(|g| self.file.tensor(&g)) else {
            return Ok(None);
        };
        match info.ty {
            GgmlType::F32 => Ok(self.read(name)?.map(StoredFloat::F32)),
            // An offset (a norm's `1 +`) is applied in f32: such tensors are read widened.
            GgmlType::F16 if (self.fixes.offset)(name) == 0.0 => {
                let bytes = self.file.tensor_bytes(info);
                let values: Vec<half::f16> = bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                self.file.release(info);
                let values = self.in_family_order(name, &info.shape(), values);
                Ok(Some(StoredFloat::F16(values)))
            }
            _ => Ok(None),
        }
    }

    fn quantized_by_rows(&self, name: &str) -> bool {
        self.by_rows(name).is_some()
    }

    fn read_quantized_rows(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<Option<Unpacked>> {
        let Some((info, cols, row_bytes)) = self.by_rows(name) else {
            return Ok(None);
        };
        let total = info.shape()[0];
        if rows.start > rows.end || rows.end > total {
            return Ok(None);
        }
        let range = rows.start * row_bytes..rows.end * row_bytes;
        let bytes = &self.file.tensor_bytes(info)[range.clone()];
        let Some(mut unpacked) = crate::format::quant::unpack(info.ty, bytes, rows.len() * cols)
        else {
            return Ok(None);
        };
        // A part's pages go as soon as it is unpacked, the pages it shares with the next
        // part once the last part is.
        self.file.release_bytes(info, range);
        if rows.end == total {
            self.file.release(info);
        }
        let offset = (self.fixes.offset)(name);
        if offset != 0.0 {
            unpacked.min.iter_mut().for_each(|m| *m -= offset);
        }
        Ok(Some(unpacked))
    }
}

impl GgufStore<'_> {
    /// `values` (tensor `name`, row-major `shape`) with its rows in the order the family
    /// reads them, where its fixes reorder them (Llama's Q/K rows); as they are otherwise.
    fn in_family_order<T: Copy>(&self, name: &str, shape: &[usize], values: Vec<T>) -> Vec<T> {
        let Some(order) = (self.fixes.rows)(name, shape) else {
            return values;
        };
        let cols = shape.iter().skip(1).product::<usize>();
        order
            .iter()
            .flat_map(|&r| values[r * cols..(r + 1) * cols].iter().copied())
            .collect()
    }

    /// Tensor `name`, its columns and bytes per row, when it is a quantized `[rows, cols]`
    /// matrix whose rows are whole blocks and whose rows the family keeps in order: then
    /// parts of its rows unpack on their own.
    fn by_rows(&self, name: &str) -> Option<(&TensorInfo, usize, usize)> {
        let info = self.to_gguf(name).and_then(|g| self.file.tensor(&g))?;
        let shape = info.shape();
        let (elements, bytes) = info.ty.block();
        let &[rows, cols] = &shape[..] else {
            return None;
        };
        let quantized = elements > 1 && crate::format::quant::unpackable(info.ty);
        let whole_blocks = (cols as u64).is_multiple_of(elements);
        if !quantized || !whole_blocks || rows == 0 || (self.fixes.rows)(name, &shape).is_some() {
            return None;
        }
        Some((info, cols, (cols as u64 / elements * bytes) as usize))
    }
}
