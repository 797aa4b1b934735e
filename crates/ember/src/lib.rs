//! Ember: transformer inference generic over burn's [`Backend`](burn::prelude::Backend).
//!
//! Load an [`Engine`] from an [`EngineConfig`] on whichever backend a backend crate
//! (`ember-flex`, ...) hands you, open a [`Session`] per conversation, and generate:
//!
//! ```no_run
//! # fn demo<B: burn::prelude::Backend>(device: B::Device) -> ember::Result<()> {
//! use ember::{CancelToken, Capabilities, Engine, EngineConfig, RuntimeInfo};
//! let config = EngineConfig::from_file("configs/cpu-f32.toml".as_ref())?;
//! let runtime = RuntimeInfo { backend: "flex".into(), device: "cpu".into(), dtype: ember::DType::F32 };
//! // What the backend crate offers beyond burn's ops (ember_tch::capabilities(&device), ...).
//! let capabilities = Capabilities::<B>::none();
//! let engine = Engine::<B>::load(&config, &device, runtime, &capabilities)?;
//! let mut session = engine.session();
//! let stats = session.generate(&config.generation, &CancelToken::new(), &mut |text| print!("{text}"))?;
//! println!("\n{} tokens", stats.generated_tokens);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
// Bad input (a file, a config, a user's text) must come back as an error, never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod audio;
pub mod backend;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
pub mod format;
pub mod graph;
pub mod memory;
pub mod models;
pub mod nn;
pub mod sampling;
pub mod source;
pub mod tokenizer;
pub mod transcribe;

pub use backend::Capabilities;
pub use config::{
    AttentionImpl, BackendConfig, BackendName, DType, EngineConfig, GenerationConfig, KernelInputs,
    Message, OnUnavailable, Role, Truncate, WeightsMode,
};
pub use embed::{cosine, Embedder, Embeddings, Pooling};
pub use engine::{
    CancelToken, Engine, FinishReason, GenerationStats, Generator, LoadProgress, Logprobs,
    Produced, RuntimeInfo, Session, TokenEvent, TokenIter, TokenStreamHandle,
};
pub use error::{Error, Result};
pub use transcribe::{
    Segment, SpeechTask, TranscribeOptions, TranscribeStats, Transcriber, Transcript,
};

/// Work to run on whatever backend the config chose: backend crates call
/// [`BackendJob::run`] with their concrete backend type, device and capabilities.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` with `device`, described by `runtime`, with what the backend
    /// offers on that device beyond burn's ops (for [`Engine::load`]).
    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> Self::Output;
}

/// What a backend crate can do, for `ember devices` and backend selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name as written in configs (`cpu`, `cuda:0`, ...).
    pub name: String,
    /// Float types usable on it.
    pub dtypes: Vec<DType>,
}
