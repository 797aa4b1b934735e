//! A hardened reader for GGUF files (llama.cpp's single-file checkpoint format).
//!
//! Every length, count and offset in the file is checked against the bytes that are
//! actually there before anything is allocated or sliced, and every size computation is
//! checked arithmetic, so a hostile file yields a [`GgufError`] naming the problem instead
//! of a panic, a huge allocation or an out-of-bounds read.
//!
//! Layout follows the specification in ggml-org/ggml `docs/gguf.md`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::cursor::{Cursor, Truncated};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Upper bound on the number of tensors a file may declare.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Upper bound on the number of metadata keys a file may declare.
pub const MAX_KEYS: u64 = 1 << 16;
/// Upper bound on tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Arrays may nest, but not deeper than this.
const MAX_ARRAY_DEPTH: usize = 2;
/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Why a GGUF file was rejected; each variant's message documents it.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("file declares {count} tensors, more than the limit of {max}")]
    TooManyTensors { count: u64, max: u64 },
    #[error("file declares {count} metadata keys, more than the limit of {max}")]
    TooManyKeys { count: u64, max: u64 },
    #[error("truncated file: reading {what} at byte {offset} needs {needed} bytes, only {available} left")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: String },
    #[error("metadata key `{key}` has unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("metadata key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")]
    ArrayTooDeep { key: String },
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),
    #[error("tensor `{name}` has unknown type {ty}")]
    UnknownTensorType { name: String, ty: u32 },
    #[error("tensor `{name}` has {n_dims} dimensions, more than {MAX_DIMS}")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor `{name}` has a zero-sized dimension {dims:?}")]
    ZeroDim { name: String, dims: Vec<u64> },
    #[error("tensor `{name}`: size of dims {dims:?} overflows")]
    SizeOverflow { name: String, dims: Vec<u64> },
    #[error(
        "tensor `{name}`: first dimension {ne0} is not a multiple of the {ty:?} block size {block}"
    )]
    BlockMismatch {
        name: String,
        ty: GgmlType,
        ne0: u64,
        block: u64,
    },
    #[error("general.alignment is {0}; it must be a non-zero power of two")]
    BadAlignment(u64),
    #[error("tensor `{name}` offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor `{name}` spans bytes {start}..{end} of the data section, which has only {data_len} bytes")]
    OutOfBounds {
        name: String,
        start: u64,
        end: u64,
        data_len: u64,
    },
    #[error("tensor `{name}` starts at data offset {offset}, before the previous tensor ended at {previous_end}")]
    Overlap {
        name: String,
        offset: u64,
        previous_end: u64,
    },
    #[error("metadata key `{key}`: expected {expected}, found {found}")]
    WrongValueType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("tensor `{name}`: type {ty:?} cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)")]
    UnsupportedTensorType { name: String, ty: GgmlType },
}

/// ggml tensor types that this reader knows the layout of.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`, from ggml's type traits.
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Where a tensor lives in the file and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name in the file.
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (the reverse of PyTorch's shape).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies.
    pub size: u64,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A file's bytes: memory-mapped from disk, or owned (a file read into memory, a fuzzer's input).
pub(crate) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file whose tensor data stays memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl From<Truncated> for GgufError {
    fn from(t: Truncated) -> Self {
        GgufError::Truncated {
            what: t.what,
            offset: t.offset,
            needed: t.needed,
            available: t.available,
        }
    }
}

/// GGUF's records on the shared cursor.
impl<'a> Cursor<'a> {
    fn gguf_string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }

    fn value(&mut self, key: &str, ty: u32, depth: usize) -> Result<Value, GgufError> {
        let what = || format!("value of `{key}`");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::String(self.gguf_string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep { key: key.into() });
                }
                let elem_ty = self.u32(&what)?;
                let len = self.u64(&what)?;
                let min_size =
                    min_value_size(elem_ty).ok_or_else(|| GgufError::UnknownValueType {
                        key: key.into(),
                        ty: elem_ty,
                    })?;
                // Every element takes at least `min_size` bytes: check before allocating.
                let needed = len.saturating_mul(min_size);
                if needed > self.remaining() {
                    return Err(GgufError::Truncated {
                        what: format!("array of {len} elements in `{key}`"),
                        offset: self.pos() as u64,
                        needed,
                        available: self.remaining(),
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.into(),
                    ty,
                })
            }
        })
    }
}

/// Smallest encoding of a value of type `ty`, or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // the u64 length of an empty string
        9 => 4 + 8, // element type and length of an empty array
        10..=12 => 8,
        _ => return None,
    })
}

impl GgufFile {
    /// Memory-maps and validates the file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; the file is not expected to change while it is open
        // (the same contract as llama.cpp's and safetensors' readers).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Bytes::Mapped(mmap))
    }

    /// Validates a GGUF file held in memory; `name` stands for its path in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, GgufError> {
        Self::parse(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, GgufError> {
        let mut c = Cursor::new(bytes.as_slice());
        let magic = c.array::<4>(&|| "magic".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_keys = c.u64(&|| "metadata key count".into())?;
        if n_tensors > MAX_TENSORS {
            return Err(GgufError::TooManyTensors {
                count: n_tensors,
                max: MAX_TENSORS,
            });
        }
        if n_keys > MAX_KEYS {
            return Err(GgufError::TooManyKeys {
                count: n_keys,
                max: MAX_KEYS,
            });
        }

        let mut metadata = HashMap::new();
        for i in 0..n_keys {
            let key = c.gguf_string(&|| format!("name of metadata key #{i}"))?;
            let ty = c.u32(&|| format!("type of `{key}`"))?;
            let value = c.value(&key, ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().ok_or_else(|| GgufError::WrongValueType {
                key: "general.alignment".into(),
                expected: "unsigned integer",
                found: v.kind(),
            })?,
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment(alignment));
        }

        // The smallest tensor record: empty name, zero dims, type and offset.
        let min_record = 8 + 4 + 4 + 8;
        if n_tensors.saturating_mul(min_record) > c.remaining() {
            return Err(GgufError::Truncated {
                what: format!("{n_tensors} tensor records"),
                offset: c.pos() as u64,
                needed: n_tensors.saturating_mul(min_record),
                available: c.remaining(),
            });
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut by_name = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.gguf_string(&|| format!("name of tensor #{i}"))?;
            let n_dims = c.u32(&|| format!("dimension count of `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::TooManyDims { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&|| format!("dimension {d} of `{name}`"))?);
            }
            let ty_id = c.u32(&|| format!("type of `{name}`"))?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnknownTensorType {
                name: name.clone(),
                ty: ty_id,
            })?;
            let offset = c.u64(&|| format!("offset of `{name}`"))?;
            if dims.contains(&0) {
                return Err(GgufError::ZeroDim { name, dims });
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&e| e <= isize::MAX as u64)
                .ok_or_else(|| GgufError::SizeOverflow {
                    name: name.clone(),
                    dims: dims.clone(),
                })?;
            let (block, block_bytes) = ty.block();
            let ne0 = dims.first().copied().unwrap_or(1);
            if ne0 % block != 0 {
                return Err(GgufError::BlockMismatch {
                    name,
                    ty,
                    ne0,
                    block,
                });
            }
            let size = (elements / block).checked_mul(block_bytes).ok_or_else(|| {
                GgufError::SizeOverflow {
                    name: name.clone(),
                    dims: dims.clone(),
                }
            })?;
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        let header_end = c.pos() as u64;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let data_len = (bytes.as_slice().len() as u64).saturating_sub(data_start);
        let mut previous_end = 0u64;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    name: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            if t.offset < previous_end {
                return Err(GgufError::Overlap {
                    name: t.name.clone(),
                    offset: t.offset,
                    previous_end,
                });
            }
            let end = t.offset.saturating_add(t.size);
            if end > data_len {
                return Err(GgufError::OutOfBounds {
                    name: t.name.clone(),
                    start: t.offset,
                    end,
                    data_len,
                });
            }
            previous_end = end;
        }

        Ok(Self {
            path,
            bytes,
            version,
            metadata,
            tensors,
            by_name,
            data_start: data_start as usize,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (validated in bounds at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start + info.offset as usize;
        &self.bytes.as_slice()[start..start + info.size as usize]
    }

    /// Lets the OS drop this process's pages of a tensor's bytes once they were copied out
    /// (dequantized, or repacked for kept weights): without it a load holds every weight
    /// twice at its peak, once in the mapped file and once in the copy (SmolLM2 Q4_1 kept:
    /// 98 MB of file pages beside 94 MiB of blocks). The bytes stay readable: a later read
    /// faults them in from the file again. Owned bytes and other platforms: nothing.
    pub fn release(&self, info: &TensorInfo) {
        self.release_bytes(info, 0..info.size as usize);
    }

    /// [`GgufFile::release`] for bytes `range` of a tensor's (a part of its rows).
    pub fn release_bytes(&self, info: &TensorInfo, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Bytes::Mapped(map) = &self.bytes {
            // Whole pages inside the range only (64 KiB covers 4 and 16 KiB pages): a
            // neighbour's bytes on a shared page stay resident.
            const PAGE: usize = 64 << 10;
            let base = self.data_start + info.offset as usize;
            let range = range.start.min(info.size as usize)..range.end.min(info.size as usize);
            let start = (base + range.start).next_multiple_of(PAGE);
            let end = (base + range.end) / PAGE * PAGE;
            if end > start {
                // SAFETY: the mapping is a read-only private mapping of the file that nothing
                // ever writes, so MADV_DONTNEED only drops clean pages: any slice borrowed from
                // it reads the same bytes afterwards, faulted in again from the file. The range
                // is inside the mapping (tensor bounds are checked at open).
                let dropped = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
                if let Err(e) = dropped {
                    tracing::debug!("madvise(DONTNEED) on {}: {e}", self.path.display());
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (info, range);
    }

    /// A tensor dequantized to f32, in row-major order of [`TensorInfo::shape`].
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        crate::format::quant::dequantize(info.ty, self.tensor_bytes(info), info.elements())
            .ok_or_else(|| GgufError::UnsupportedTensorType {
                name: info.name.clone(),
                ty: info.ty,
            })
    }

    /// A quantized tensor's blocks decoded into integers, scales and offsets (see
    /// [`crate::format::quant::unpack`]); `None` for a float tensor.
    pub fn unpack(&self, info: &TensorInfo) -> Option<crate::format::quant::Unpacked> {
        crate::format::quant::unpack(info.ty, self.tensor_bytes(info), info.elements())
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    /// An unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key)?;
        v.as_u64().ok_or_else(|| GgufError::WrongValueType {
            key: key.into(),
            expected: "unsigned integer",
            found: v.kind(),
        })
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key)?;
        v.as_f64().ok_or_else(|| GgufError::WrongValueType {
            key: key.into(),
            expected: "number",
            found: v.kind(),
        })
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(GgufError::WrongValueType {
                key: key.into(),
                expected: "string",
                found: v.kind(),
            }),
        }
    }

    /// An array-of-strings metadata value.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let wrong = |found| GgufError::WrongValueType {
            key: key.into(),
            expected: "array of strings",
            found,
        };
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(wrong(other.kind())),
                })
                .collect(),
            v => Err(wrong(v.kind())),
        }
    }

    /// An array-of-integers metadata value.
    pub fn get_ints(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let wrong = |found| GgufError::WrongValueType {
            key: key.into(),
            expected: "array of integers",
            found,
        };
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match *v {
                    Value::I32(x) => Ok(x.into()),
                    Value::I64(x) => Ok(x),
                    Value::U32(x) => Ok(x.into()),
                    Value::U8(x) => Ok(x.into()),
                    Value::I8(x) => Ok(x.into()),
                    Value::U16(x) => Ok(x.into()),
                    Value::I16(x) => Ok(x.into()),
                    ref other => Err(wrong(other.kind())),
                })
                .collect(),
            v => Err(wrong(v.kind())),
        }
    }

    /// An array-of-floats metadata value (SentencePiece scores).
    pub fn get_floats(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let wrong = |found| GgufError::WrongValueType {
            key: key.into(),
            expected: "array of floats",
            found,
        };
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match *v {
                    Value::F32(x) => Ok(x),
                    Value::F64(x) => Ok(x as f32),
                    ref other => Err(wrong(other.kind())),
                })
                .collect(),
            v => Err(wrong(v.kind())),
        }
    }
}
