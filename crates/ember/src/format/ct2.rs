//! A hardened reader for CTranslate2's `model.bin` (the format faster-whisper runs).
//!
//! Layout (binary versions 4 to 6, as CTranslate2's `python/ctranslate2/specs/model_spec.py`
//! writes it and `src/models/model.cc` reads it; all integers little-endian):
//!
//! ```text
//! u32 binary version
//! string spec name ("WhisperSpec"), u32 spec revision
//! u32 variable count, then per variable:
//!     string name, u8 rank, rank x u32 dims, u8 dtype id, u32 byte count, the bytes
//! u32 alias count, then per alias: string alias, string variable name
//! ```
//!
//! A string is a u16 length counting a terminating NUL, then that many bytes. Scalars
//! (rank 0) carry model settings (`decoder/num_heads`, `decoder/activation`); a tied output
//! projection is an alias of the embedding.
//!
//! Hand-written, like the GGUF reader, because it must be hardened: every length, count and
//! byte count is checked against the bytes that are actually there, and against the shape
//! and dtype it claims, before anything is allocated or sliced, so a hostile file yields a
//! [`Ct2Error`] naming the problem instead of a panic, a huge allocation or a wrong tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::cursor::{Cursor, Truncated};
use super::gguf::Bytes;

/// Binary versions this reader understands (dtype ids and aliases exist from version 4 on).
pub const VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;
/// Upper bound on the number of variables (and of aliases) a file may declare.
pub const MAX_VARIABLES: u32 = 1 << 16;
/// Upper bound on a variable's rank.
pub const MAX_RANK: u8 = 8;

/// Why a `model.bin` was rejected; each variant's message documents it.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("unsupported CTranslate2 binary version {0} (supported: 4 to 6)")]
    UnsupportedVersion(u32),
    #[error("truncated file: reading {what} at byte {offset} needs {needed} bytes, only {available} left")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what}: a string must end with its NUL byte (length {length})")]
    BadString { what: String, length: u16 },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: String },
    #[error("file declares {count} {what}, more than the limit of {max}")]
    TooMany {
        what: &'static str,
        count: u32,
        max: u32,
    },
    #[error("variable `{name}` has rank {rank}, more than {MAX_RANK}")]
    TooManyDims { name: String, rank: u8 },
    #[error("variable `{name}` has a zero-sized dimension {dims:?}")]
    ZeroDim { name: String, dims: Vec<u32> },
    #[error("variable `{name}` has unknown dtype id {id} (known: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)")]
    UnknownDType { name: String, id: u8 },
    #[error("variable `{name}`: shape {dims:?} of {dtype:?} takes {expected} bytes, but the file says {found}")]
    SizeMismatch {
        name: String,
        dims: Vec<u32>,
        dtype: Ct2Type,
        expected: u64,
        found: u32,
    },
    #[error("variable `{0}` appears twice")]
    DuplicateVariable(String),
    #[error("alias `{alias}` names `{target}`, which is not a variable")]
    DanglingAlias { alias: String, target: String },
    #[error("alias `{0}` is also a variable or an earlier alias")]
    DuplicateAlias(String),
    #[error("{0} bytes follow the last alias")]
    TrailingBytes(u64),
    #[error("variable `{0}` is missing")]
    Missing(String),
    #[error("variable `{name}` is {found:?}; expected {expected}")]
    WrongType {
        name: String,
        expected: &'static str,
        found: Ct2Type,
    },
}

/// A variable's stored type (CTranslate2's `DataType` ids).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Type {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2Type {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable: where its bytes are and what they hold.
#[derive(Debug, Clone)]
pub struct Variable {
    /// The name in the file (`encoder/layer_0/ffn/linear_0/weight`).
    pub name: String,
    /// Row-major shape; empty for a scalar.
    pub shape: Vec<usize>,
    /// Stored type.
    pub dtype: Ct2Type,
    /// Byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data (elements x element size, checked at open).
    pub size: usize,
}

impl Variable {
    /// Number of elements (1 for a scalar).
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed, validated `model.bin` whose data stays memory-mapped.
pub struct Ct2File {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    spec: String,
    revision: u32,
    variables: Vec<Variable>,
    by_name: HashMap<String, usize>,
    aliases: HashMap<String, String>,
}

impl std::fmt::Debug for Ct2File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2File")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("spec", &self.spec)
            .field("revision", &self.revision)
            .field("variables", &self.variables.len())
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl From<Truncated> for Ct2Error {
    fn from(t: Truncated) -> Self {
        Ct2Error::Truncated {
            what: t.what,
            offset: t.offset,
            needed: t.needed,
            available: t.available,
        }
    }
}

/// CTranslate2's records on the shared cursor.
impl<'a> Cursor<'a> {
    /// A u16 length (NUL included), the bytes, the NUL.
    fn ct2_string(&mut self, what: &dyn Fn() -> String) -> Result<String, Ct2Error> {
        let length = u16::from_le_bytes(self.array(what)?);
        let bytes = self.take(length.into(), what)?;
        let Some((&0, text)) = bytes.split_last() else {
            return Err(Ct2Error::BadString {
                what: what(),
                length,
            });
        };
        if text.contains(&0) {
            return Err(Ct2Error::BadString {
                what: what(),
                length,
            });
        }
        String::from_utf8(text.to_vec()).map_err(|_| Ct2Error::BadUtf8 { what: what() })
    }

    fn count(&mut self, what: &'static str) -> Result<u32, Ct2Error> {
        let count = self.u32(&|| format!("{what} count"))?;
        if count > MAX_VARIABLES {
            return Err(Ct2Error::TooMany {
                what,
                count,
                max: MAX_VARIABLES,
            });
        }
        Ok(count)
    }

    fn variable(&mut self, index: u32) -> Result<Variable, Ct2Error> {
        let name = self.ct2_string(&|| format!("name of variable #{index}"))?;
        let rank = self.u8(&|| format!("rank of `{name}`"))?;
        if rank > MAX_RANK {
            return Err(Ct2Error::TooManyDims { name, rank });
        }
        let dims = (0..rank)
            .map(|d| self.u32(&|| format!("dimension {d} of `{name}`")))
            .collect::<Result<Vec<u32>, _>>()?;
        if dims.contains(&0) {
            return Err(Ct2Error::ZeroDim { name, dims });
        }
        let id = self.u8(&|| format!("dtype of `{name}`"))?;
        let dtype = Ct2Type::from_id(id).ok_or_else(|| Ct2Error::UnknownDType {
            name: name.clone(),
            id,
        })?;
        let found = self.u32(&|| format!("byte count of `{name}`"))?;
        // Checked arithmetic: 8 dims of up to 2^32 overflow even u128.
        let expected = dims
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(u64::from(d)));
        if expected != Some(u64::from(found)) {
            return Err(Ct2Error::SizeMismatch {
                name,
                dims,
                dtype,
                expected: expected.unwrap_or(u64::MAX),
                found,
            });
        }
        let offset = self.pos();
        self.take(found.into(), &|| format!("data of `{name}`"))?;
        Ok(Variable {
            name,
            shape: dims.iter().map(|&d| d as usize).collect(),
            dtype,
            offset,
            size: found as usize,
        })
    }
}

impl Ct2File {
    /// Memory-maps and validates the file at `path`.
    pub fn open(path: &Path) -> Result<Self, Ct2Error> {
        let io = |error| Ct2Error::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; the file is not expected to change while it is open
        // (the contract of the GGUF and safetensors readers too).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Bytes::Mapped(mmap))
    }

    /// Validates a `model.bin` held in memory; `name` stands for its path in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, Ct2Error> {
        Self::parse(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, Ct2Error> {
        let mut c = Cursor::new(bytes.as_slice());
        let version = c.u32(&|| "binary version".into())?;
        if !VERSIONS.contains(&version) {
            return Err(Ct2Error::UnsupportedVersion(version));
        }
        let spec = c.ct2_string(&|| "spec name".into())?;
        let revision = c.u32(&|| "spec revision".into())?;
        let n_variables = c.count("variables")?;
        // The smallest record: a one-byte name with its NUL, rank, dtype, byte count and one
        // byte of data. Checked before the loop so a huge count fails at once.
        let min_record = 2 + 2 + 1 + 1 + 4 + 1;
        if u64::from(n_variables) * min_record > c.remaining() {
            return Err(Ct2Error::Truncated {
                what: format!("{n_variables} variable records"),
                offset: c.pos() as u64,
                needed: u64::from(n_variables) * min_record,
                available: c.remaining(),
            });
        }
        let mut variables = Vec::new();
        let mut by_name = HashMap::new();
        for i in 0..n_variables {
            let variable = c.variable(i)?;
            if by_name
                .insert(variable.name.clone(), variables.len())
                .is_some()
            {
                return Err(Ct2Error::DuplicateVariable(variable.name));
            }
            variables.push(variable);
        }
        let n_aliases = c.count("aliases")?;
        let mut aliases = HashMap::new();
        for i in 0..n_aliases {
            let alias = c.ct2_string(&|| format!("alias #{i}"))?;
            let target = c.ct2_string(&|| format!("target of alias `{alias}`"))?;
            if !by_name.contains_key(&target) {
                return Err(Ct2Error::DanglingAlias { alias, target });
            }
            if by_name.contains_key(&alias) || aliases.contains_key(&alias) {
                return Err(Ct2Error::DuplicateAlias(alias));
            }
            aliases.insert(alias, target);
        }
        if c.remaining() > 0 {
            return Err(Ct2Error::TrailingBytes(c.remaining()));
        }
        Ok(Self {
            path,
            bytes,
            version,
            spec,
            revision,
            variables,
            by_name,
            aliases,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The binary version (4 to 6).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The model specification's name (`WhisperSpec`, `TransformerSpec`, ...).
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The specification's revision.
    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// All variables, in file order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Aliases and the variables they name.
    pub fn aliases(&self) -> &HashMap<String, String> {
        &self.aliases
    }

    /// The variable called `name`, or the one the alias `name` names.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.by_name.get(name).map(|&i| &self.variables[i])
    }

    fn get(&self, name: &str) -> Result<&Variable, Ct2Error> {
        self.variable(name)
            .ok_or_else(|| Ct2Error::Missing(name.into()))
    }

    /// A variable's raw bytes (validated in bounds at open).
    pub fn bytes_of(&self, variable: &Variable) -> &[u8] {
        &self.bytes.as_slice()[variable.offset..variable.offset + variable.size]
    }

    /// A float variable (f32, f16 or bf16) as f32, row-major.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, Ct2Error> {
        let v = self.get(name)?;
        let bytes = self.bytes_of(v);
        Ok(match v.dtype {
            Ct2Type::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Ct2Type::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Ct2Type::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            found => {
                return Err(Ct2Error::WrongType {
                    name: name.into(),
                    expected: "a float tensor (f32, f16, bf16)",
                    found,
                })
            }
        })
    }

    /// An integer scalar (a model setting such as `decoder/num_heads`).
    pub fn scalar_int(&self, name: &str) -> Result<i64, Ct2Error> {
        let v = self.get(name)?;
        let b = self.bytes_of(v);
        let wrong = |found| Ct2Error::WrongType {
            name: name.into(),
            expected: "an integer scalar",
            found,
        };
        if !v.shape.is_empty() {
            return Err(wrong(v.dtype));
        }
        Ok(match v.dtype {
            Ct2Type::I8 => i64::from(b[0] as i8),
            Ct2Type::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            Ct2Type::I32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            found => return Err(wrong(found)),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A minimal valid file: one f16 matrix, one i16 scalar, one alias.
    pub(crate) fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u16 + 1).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        };
        out.extend(6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend(3u32.to_le_bytes());
        out.extend(2u32.to_le_bytes());
        string(&mut out, "w");
        out.push(2);
        out.extend(2u32.to_le_bytes());
        out.extend(3u32.to_le_bytes());
        out.push(4);
        out.extend(12u32.to_le_bytes());
        for x in [1.0f32, -2.0, 0.5, 0.0, 3.0, -0.25] {
            out.extend(f16::from_f32(x).to_le_bytes());
        }
        string(&mut out, "heads");
        out.push(0);
        out.push(2);
        out.extend(2u32.to_le_bytes());
        out.extend(6i16.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        string(&mut out, "tied");
        string(&mut out, "w");
        out
    }

    #[test]
    fn reads_a_valid_file() {
        let file = Ct2File::from_bytes(sample(), "sample.bin").unwrap();
        assert_eq!(file.spec(), "WhisperSpec");
        assert_eq!(file.revision(), 3);
        assert_eq!(
            file.read_f32("w").unwrap(),
            [1.0, -2.0, 0.5, 0.0, 3.0, -0.25]
        );
        assert_eq!(file.read_f32("tied").unwrap(), file.read_f32("w").unwrap());
        assert_eq!(file.variable("tied").unwrap().shape, [2, 3]);
        assert_eq!(file.scalar_int("heads").unwrap(), 6);
        assert!(matches!(
            file.read_f32("heads"),
            Err(Ct2Error::WrongType { .. })
        ));
        assert!(matches!(file.read_f32("nope"), Err(Ct2Error::Missing(_))));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let err = Ct2File::from_bytes(bytes[..len].to_vec(), "cut.bin").unwrap_err();
            assert!(matches!(err, Ct2Error::Truncated { .. }), "{len}: {err}");
        }
    }
}
