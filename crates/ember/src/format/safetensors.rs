//! Hugging Face `*.safetensors` checkpoints, single or sharded with an index.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::TensorStore;
use crate::error::{Error, Result};

/// The shard file names listed in a `model.safetensors.index.json`.
pub fn shards_of_index(text: &str, path: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let index: Index = serde_json::from_str(text)
        .map_err(|e| Error::model(path, format!("invalid safetensors index: {e}")))?;
    let mut shards: Vec<String> = index.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    for shard in &shards {
        if shard.contains(['/', '\\']) || shard.starts_with('.') {
            return Err(Error::model(
                path,
                format!("shard name `{shard}` is not a plain file name"),
            ));
        }
    }
    Ok(shards)
}

/// All tensors of a directory's safetensors files, memory-mapped.
pub struct SafetensorsStore {
    dir: PathBuf,
    shards: Vec<Mmap>,
    /// name -> (shard index, shape), read once from the headers at open
    index: HashMap<String, (usize, Vec<usize>)>,
}

impl SafetensorsStore {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(Error::io(&index_path))?;
            shards_of_index(&text, &index_path)?
        } else if dir.join("model.safetensors").is_file() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(Error::model(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for name in files {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(Error::io(&path))?;
            // SAFETY: read-only map of a file not expected to change while open.
            let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(&path))?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::model(&path, format!("invalid safetensors: {e}")))?;
            for (tensor, view) in st.tensors() {
                if index
                    .insert(tensor.clone(), (shards.len(), view.shape().to_vec()))
                    .is_some()
                {
                    return Err(Error::model(
                        &path,
                        format!("tensor `{tensor}` appears in two shards"),
                    ));
                }
            }
            shards.push(mmap);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }
}

impl TensorStore for SafetensorsStore {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, shape)| shape.clone())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let Some(&(i, _)) = self.index.get(name) else {
            return Ok(None);
        };
        let st = SafeTensors::deserialize(&self.shards[i])
            .map_err(|e| Error::model(&self.dir, format!("invalid safetensors: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::model(&self.dir, format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::model(
                    &self.dir,
                    format!("tensor `{name}` has dtype {other:?} (supported: F32, F16, BF16)"),
                ))
            }
        };
        Ok(Some(values))
    }
}
