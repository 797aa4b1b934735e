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
        let result = checkpoint.and_then(|c| llama_bench(&c, plan));
        out.push((result, base));
    }
    out
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
    let (spec_path, out_path) = (
        scratch.join(format!("{name}.json")),
        scratch.join(format!("{name}.out")),
    );
    let spec = spec.to_string();
    // Resuming an interrupted bench: the same run, finished before, is not run again.
    if plan.resume.is_some() && std::fs::read_to_string(&spec_path).ok() == Some(spec.clone()) {
        if let Some((run, when)) = super::finished_output(&out_path) {
            *test_time = when;
            return Ok((run, logits_path.is_file().then_some(logits_path)));
        }
    }
    std::fs::write(&spec_path, &spec).map_err(|e| format!("failed: {e}"))?;
    let python = std::env::var("EMBER_PYTHON").unwrap_or_else(|_| "python3".into());
    let err_path = scratch.join(format!("{name}.err"));
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(&spec_path);
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
            let run: RunResult =
                serde_json::from_str(line).map_err(|e| format!("failed: bad result: {e}"))?;
            let logits = logits_path.is_file().then_some(logits_path);
            Ok((run, logits))
        }
        // The script exits 3 when torch, transformers (or gguf) or the device is missing.
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
    let out = match Command::new("llama-bench")
        .arg("-m")
        .arg(path)
        .args(["-p", &list(&plan.n_prompt), "-n", &list(&plan.n_gen)])
        .args(["-r", &plan.repetitions.to_string(), "-o", "json"])
        .stdin(Stdio::null())
        .output()
    {
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
    let rows: Vec<LlamaBenchRow> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("failed: unreadable llama-bench JSON: {e}"))?;
    let first = rows.first().ok_or("failed: llama-bench printed no rows")?;
    let run = RunResult {
        backend: format!("llama.cpp {}", first.backends),
        device: first.gpu_info.clone(),
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
            })
            .collect(),
        ..RunResult::default()
    };
    Ok((run, None))
}

#[cfg(test)]
mod tests {
    use super::*;

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
