//! [`Engine`]: a loaded model, tokenizer and template; [`Session`]: one conversation with its
//! own KV cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::*;

use crate::backend::Capabilities;
use crate::config::{
    AttentionImpl, DType, EngineConfig, GenerationConfig, Message, Role, Truncate,
};
use crate::error::{Error, Result};
use crate::format::Loader;
use crate::graph::{DeviceGraphs, Graph, GraphStream};
use crate::models::{
    ensure_fits, token_tensor, DecoderConfig, DecoderJob, DecoderModel, LoadDecoder, Logits,
    Opened, Task,
};
use crate::nn::kv_cache::KvCache;
use crate::nn::Fused;
use crate::sampling::Sampler;
use crate::source::Checkpoint;
use crate::tokenizer::{TextTokenizer, TokenStream};

/// The context used when neither the config nor a smaller model limit says otherwise.
pub const DEFAULT_CONTEXT: usize = 4096;

/// What a run executes on, for logs and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Backend name (`flex`, `candle`, ...).
    pub backend: String,
    /// Device, as the backend names it.
    pub device: String,
    /// Float type of weights and activations.
    pub dtype: DType,
}

/// Progress of a model load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadProgress {
    /// The checkpoint is being fetched or opened.
    Opening,
    /// `done` of `total` tensors are on the device.
    Tensors {
        /// Tensors loaded.
        done: usize,
        /// Tensors in the checkpoint.
        total: usize,
    },
}

/// A loaded model, immutable after load and shareable between threads.
#[derive(Debug)]
pub struct Engine<B: Backend> {
    model: Box<dyn DecoderModel<B>>,
    tokenizer: TextTokenizer,
    device: B::Device,
    runtime: RuntimeInfo,
    attention: AttentionImpl,
    context: usize,
    decode_window: usize,
    graphs: Option<GraphSupport<B>>,
    checkpoint: Checkpoint,
    load_time: Duration,
}

/// The backend's graph support, when this engine replays its decode steps.
struct GraphSupport<B: Backend>(Arc<dyn DeviceGraphs<B>>);

impl<B: Backend> std::fmt::Debug for GraphSupport<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceGraphs")
    }
}

impl<B: Backend> Engine<B> {
    /// Fetches (if needed) and loads the model of `config` onto `device`, with what the
    /// backend crate offers there: the model holds its fused ops, and sessions replay their
    /// decode steps through its graphs where `backend.graphs` is set and the device supports
    /// them ([`Engine::replays_graphs`]). [`Capabilities::none`] runs burn's ops only.
    pub fn load(
        config: &EngineConfig,
        device: &B::Device,
        runtime: RuntimeInfo,
        capabilities: &Capabilities<B>,
    ) -> Result<Self> {
        Self::load_with_progress(config, device, runtime, capabilities, &mut |_| {})
    }

    /// [`Engine::load`], reporting progress to `progress`.
    pub fn load_with_progress(
        config: &EngineConfig,
        device: &B::Device,
        runtime: RuntimeInfo,
        capabilities: &Capabilities<B>,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let start = Instant::now();
        let dtype = runtime.dtype.to_burn().ok_or_else(|| {
            Error::Backend("the backend must resolve dtype = \"auto\" before loading".into())
        })?;
        if !B::supports_dtype(device, dtype) {
            return Err(Error::Backend(format!(
                "{} on {} does not support {}",
                runtime.backend, runtime.device, runtime.dtype
            )));
        }
        progress(LoadProgress::Opening);
        let opened = Opened::open(&config.model)?;
        opened
            .architecture
            .expect_task(Task::Generate, opened.checkpoint.path())?;
        let job = LoadJob {
            opened: &opened,
            config,
            device,
            runtime: &runtime,
            dtype,
            fused: capabilities.fused.clone(),
            progress,
        };
        let (model, tokenizer, context) = opened.architecture.load_decoder::<B, _>(job)?;
        let graphs = capabilities
            .graphs
            .clone()
            .filter(|g| config.backend.graphs && g.supports(device))
            .map(GraphSupport);
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            runtime,
            attention: config.backend.attention,
            context,
            decode_window: config
                .model
                .decode_window
                .unwrap_or(crate::nn::kv_cache::DECODE_WINDOW),
            graphs,
            checkpoint: opened.checkpoint,
            load_time: start.elapsed(),
        })
    }

    /// A new conversation with its own KV cache, allocated once for the whole context.
    pub fn session(&self) -> Session<'_, B> {
        self.session_with(EngineRef::Borrowed(self))
    }

    /// [`Engine::session`] holding a handle to the engine instead of a borrow: the session
    /// can move into another thread or an async task ([`Session::into_stream`]).
    pub fn shared_session(self: &Arc<Self>) -> Session<'static, B> {
        self.session_with(EngineRef::Shared(self.clone()))
    }

    /// A KV cache for one sequence of up to the engine's context, as sessions use.
    pub fn new_cache(&self) -> KvCache<B> {
        self.model
            .new_cache(1, self.context, &self.device)
            .with_decode_window(self.decode_window)
    }

    /// [`Engine::new_cache`] whose memory grows in blocks of `block` positions as its
    /// sequence does ([`KvCache::with_block`]; 0: the whole context at the first step).
    pub fn new_cache_growing(&self, block: usize) -> KvCache<B> {
        self.new_cache().with_block(block)
    }

    /// A KV cache of `slots` rows, each the cache of a separate sequence at its own length
    /// (a server's batch: [`KvCache::next_row`], [`KvCache::next_rows`]), growing in blocks
    /// of `block` positions (0: the whole context at the first step).
    pub fn new_slot_cache(&self, slots: usize, block: usize) -> KvCache<B> {
        self.model
            .new_cache(slots.max(1), self.context, &self.device)
            .with_decode_window(self.decode_window)
            .with_block(block)
    }

    /// The attention implementation forward passes run.
    pub fn attention(&self) -> AttentionImpl {
        self.attention
    }

    fn session_with<'e>(&self, engine: EngineRef<'e, B>) -> Session<'e, B> {
        Session {
            engine,
            cache: self
                .model
                .new_cache(1, self.context, &self.device)
                .with_decode_window(self.decode_window),
            tokens: Vec::new(),
            messages: Vec::new(),
            replay: self
                .graphs
                .as_ref()
                .and_then(|g| match g.0.stream(&self.device) {
                    Ok(stream) => Some(Replay {
                        graphs: g.0.clone(),
                        stream,
                        step: Tensor::zeros([2], &self.device),
                        recorded: Vec::new(),
                    }),
                    Err(e) => {
                        tracing::warn!("this session decodes without graph replay: {e}");
                        None
                    }
                }),
        }
    }

    /// Whether sessions replay their decode steps as recorded graphs (`backend.graphs` on a
    /// backend that can; see [`crate::graph`]).
    pub fn replays_graphs(&self) -> bool {
        self.graphs.is_some()
    }

    /// Backend, device and dtype this engine runs on.
    pub fn runtime(&self) -> &RuntimeInfo {
        &self.runtime
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &dyn DecoderModel<B> {
        self.model.as_ref()
    }

    /// The checkpoint the weights came from.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Tokens a session can hold.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// Wall time of [`Engine::load`], fetching included.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The device.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Prompt token ids for `generation`: its messages through the chat template, or its
    /// raw prompt.
    pub fn prompt_tokens(&self, generation: &GenerationConfig) -> Result<Vec<u32>> {
        if !generation.messages.is_empty() {
            let text = self.tokenizer.apply_chat_template(&generation.messages)?;
            self.tokenizer.encode(&text, false)
        } else if let Some(prompt) = &generation.prompt {
            self.tokenizer.encode(prompt, true)
        } else {
            Err(Error::Config {
                path: "[generation]".into(),
                message: "no prompt: set generation.prompt or generation.messages".into(),
            })
        }
    }
}

/// The steps every decoder load shares after the checkpoint is open, run with the family's
/// type ([`crate::models::Architecture::load_decoder`]).
struct LoadJob<'a, B: Backend> {
    opened: &'a Opened,
    config: &'a EngineConfig,
    device: &'a B::Device,
    runtime: &'a RuntimeInfo,
    dtype: burn::tensor::DType,
    fused: Option<Fused<B>>,
    progress: &'a mut dyn FnMut(LoadProgress),
}

impl<B: Backend> DecoderJob<B> for LoadJob<'_, B> {
    type Output = (Box<dyn DecoderModel<B>>, TextTokenizer, usize);

    fn path(&self) -> &std::path::Path {
        self.opened.checkpoint.path()
    }

    fn run<M: LoadDecoder<B>>(self) -> Result<Self::Output> {
        let path = self.opened.checkpoint.path();
        let (model_config, tokenizer, store) = self.opened.decoder_parts::<B, M>()?;
        if tokenizer.vocab_size() > model_config.vocab_size() {
            return Err(Error::model(
                path,
                format!(
                    "the tokenizer has {} tokens but the model only {}",
                    tokenizer.vocab_size(),
                    model_config.vocab_size()
                ),
            ));
        }
        let trained = model_config.max_position_embeddings();
        let context = self
            .config
            .model
            .context_length
            .unwrap_or(trained.min(DEFAULT_CONTEXT));
        if context > trained {
            tracing::warn!(
                "model.context_length {context} exceeds the model's trained context {trained}"
            );
        }
        let params = model_config.param_count();
        let what = format!(
            "{} ({params} parameters in {}, and one {context}-token KV cache)",
            path.display(),
            self.runtime.dtype,
        );
        let elements = params + model_config.context_elements(context);
        ensure_fits(&self.runtime.device, &what, elements, self.dtype.size())?;
        let progress = self.progress;
        let mut on_tensor = |done, total| progress(LoadProgress::Tensors { done, total });
        let keep = self.config.model.weights == crate::config::WeightsMode::Keep;
        let loader = Loader::<B>::new(store.as_ref(), self.device, self.dtype, &mut on_tensor)
            .keep_quantized(keep)
            .with_fused(self.fused);
        let model = M::load(model_config, &loader, context, self.device)?;
        loader.finish()?;
        Ok((Box::new(model), tokenizer, context))
    }
}

/// Cancels a generation from another thread (or a signal handler).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop after the current token.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached a stop string.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The context is full.
    Context,
    /// A [`CancelToken`] was cancelled.
    Cancelled,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// Tokens of the prompt that were run.
    pub prompt_tokens: usize,
    /// Tokens of the prompt already in the session's cache from earlier turns, not run again
    /// ([`Session::chat`]).
    pub cached_tokens: usize,
    /// Prompt tokens dropped to fit the context (`generation.truncate = "left"`): the
    /// oldest tokens of a raw prompt, or the oldest whole turns of a chat.
    pub truncated_tokens: usize,
    /// Time to process the prompt (up to the first token's logits).
    pub prefill: Duration,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time spent generating after the prefill.
    pub decode: Duration,
    /// Why it stopped.
    pub finish: FinishReason,
    /// The generated token ids.
    pub tokens: Vec<u32>,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second, counting the decode steps after the first token.
    pub fn decode_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// How a session holds its engine: borrowed ([`Engine::session`]) or shared
/// ([`Engine::shared_session`], a session that can move into another thread or an async task).
enum EngineRef<'e, B: Backend> {
    Borrowed(&'e Engine<B>),
    Shared(Arc<Engine<B>>),
}

impl<B: Backend> Clone for EngineRef<'_, B> {
    fn clone(&self) -> Self {
        match self {
            EngineRef::Borrowed(e) => EngineRef::Borrowed(e),
            EngineRef::Shared(e) => EngineRef::Shared(e.clone()),
        }
    }
}

impl<B: Backend> std::ops::Deref for EngineRef<'_, B> {
    type Target = Engine<B>;
    fn deref(&self) -> &Engine<B> {
        match self {
            EngineRef::Borrowed(e) => e,
            EngineRef::Shared(e) => e,
        }
    }
}

/// One conversation: its KV cache and the tokens in it.
pub struct Session<'e, B: Backend> {
    engine: EngineRef<'e, B>,
    cache: KvCache<B>,
    tokens: Vec<u32>,
    /// The chat whose rendering the cache holds (with the answers generated), when the
    /// session holds one.
    messages: Vec<Message>,
    /// Recorded decode steps, when the engine replays graphs.
    replay: Option<Replay<B>>,
}

/// A session's recorded decode steps: one per attended window (the window grows in steps of
/// `decode_window` positions, and a recording has fixed shapes).
///
/// Fields drop in order: the recordings and their buffers before the stream they were made on.
struct Replay<B: Backend> {
    recorded: Vec<Recorded<B>>,
    /// `[token id, position]`: the recorded steps' input, written before each replay.
    step: Tensor<B, 1, Int>,
    stream: Box<dyn GraphStream>,
    graphs: Arc<dyn DeviceGraphs<B>>,
}

struct Recorded<B: Backend> {
    window: usize,
    graph: Box<dyn Graph>,
    /// Where the recording leaves its logits.
    logits: Tensor<B, 3>,
    /// The KV cache's device addresses when recorded; a replay is valid only at these.
    addresses: Vec<usize>,
}

impl<'e, B: Backend> Session<'e, B> {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the session is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens in the session so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The chat so far, its answers included, when the session holds one
    /// ([`Session::chat`], or [`Session::generate`] with messages); empty otherwise.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Forgets the conversation; the cache memory is reused.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
        self.messages.clear();
    }

    /// Runs `ids` through the model and returns the logits of each position, `[len, vocab]`
    /// flattened, or of the last one only (`all = false`).
    pub fn forward(&mut self, ids: &[u32], all: bool) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Config {
                path: "[generation]".into(),
                message: "empty prompt: there is nothing to run".into(),
            });
        }
        let vocab = self.engine.model.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if let ([id], false, Some(replay)) = (ids, all, self.replay.as_mut()) {
            let pos = self.cache.len();
            if pos >= self.cache.capacity() {
                return Err(Error::ContextOverflow {
                    prompt: pos + 1,
                    context: self.cache.capacity(),
                    max_new_tokens: 0,
                });
            }
            match replay.decode(&self.engine, &mut self.cache, *id, pos) {
                Ok(logits) => {
                    self.cache.advance(1);
                    self.tokens.push(*id);
                    return Ok(logits);
                }
                Err(e) => {
                    tracing::warn!("decoding without graph replay from now on: {e}");
                    self.replay = None;
                }
            }
        }
        // The model checks that the ids fit in the cache.
        let input = token_tensor::<B>(ids, &self.engine.device);
        let which = if all { Logits::All } else { Logits::Last };
        let logits =
            self.engine
                .model
                .forward(input, &mut self.cache, self.engine.attention, which)?;
        self.tokens.extend_from_slice(ids);
        Ok(logits.into_data().iter::<f32>().collect())
    }

    /// Processes a prompt; returns the next-token logits.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.forward(ids, false)
    }

    /// Appends one token; returns the next-token logits.
    pub fn decode(&mut self, id: u32) -> Result<Vec<f32>> {
        self.forward(&[id], false)
    }

    /// Generates from `generation`'s prompt, calling `on_text` with each piece of text as
    /// soon as it forms complete characters.
    ///
    /// Chat `messages` are the whole conversation: rendered through the chat template, of
    /// which only the tokens beyond those the session already holds are run, when the
    /// session's tokens are a prefix of the rendering (an earlier call with the conversation
    /// so far); otherwise the session starts over with the whole rendering. A raw `prompt`
    /// continues the session's tokens ([`Session::generate_from_tokens`]).
    pub fn generate(
        &mut self,
        generation: &GenerationConfig,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationStats> {
        if !generation.messages.is_empty() {
            return self.generate_chat(generation.messages.clone(), generation, cancel, on_text);
        }
        let prompt = self.engine.prompt_tokens(generation)?;
        self.generate_from_tokens(&prompt, generation, cancel, on_text)
    }

    /// Appends `turns` to the session's chat ([`Session::messages`]; usually one user
    /// message, a system message before it in a new session) and generates the assistant's
    /// answer, which joins the chat. The whole chat is rendered through the template and
    /// only its new tokens are run: the earlier turns stay in the cache. `generation`'s own
    /// `prompt` and `messages` are not used.
    pub fn chat(
        &mut self,
        turns: &[Message],
        generation: &GenerationConfig,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationStats> {
        let mut conversation = self.messages.clone();
        conversation.extend_from_slice(turns);
        self.generate_chat(conversation, generation, cancel, on_text)
    }

    /// Renders `conversation`, fits it in the context (dropping whole earlier turns where
    /// `generation.truncate = "left"`), runs what the cache does not hold yet and generates;
    /// the answer joins the conversation.
    fn generate_chat(
        &mut self,
        mut conversation: Vec<Message>,
        generation: &GenerationConfig,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationStats> {
        let tokenizer = &self.engine.tokenizer;
        let render = |messages: &[Message]| -> Result<Vec<u32>> {
            tokenizer.encode(&tokenizer.apply_chat_template(messages)?, false)
        };
        let capacity = self.cache.capacity();
        let whole = render(&conversation)?;
        let mut ids = whole.clone();
        // A prompt fits when one position is left to generate (as for raw prompts).
        if ids.len() >= capacity {
            if generation.truncate == Truncate::Error {
                return Err(Error::ContextOverflow {
                    prompt: ids.len(),
                    context: capacity,
                    max_new_tokens: generation.max_new_tokens,
                });
            }
            let reserve = generation.max_new_tokens.clamp(1, (capacity / 2).max(1));
            let target = capacity.saturating_sub(reserve).max(1);
            let mut dropped = 0;
            while ids.len() > target {
                if !drop_oldest_turn(&mut conversation) {
                    return Err(Error::ChatOverflow {
                        kept: ids.len(),
                        context: capacity,
                        max_new_tokens: generation.max_new_tokens,
                    });
                }
                dropped += 1;
                ids = render(&conversation)?;
            }
            tracing::warn!(
                "the chat of {} tokens does not fit in the {capacity}-token context: dropped \
                 its {dropped} oldest message(s), {} tokens, keeping the system prompt and \
                 the last turn (generation.truncate = \"left\")",
                whole.len(),
                whole.len() - ids.len()
            );
        }
        let truncated = whole.len() - ids.len();
        // The cache holds earlier turns only if its tokens begin the new rendering: a
        // template may render an earlier answer otherwise than it was generated (trimmed,
        // re-tokenized, cut by a stop string), and then the chat runs from the start.
        let cached = if self.tokens.len() < ids.len() && ids.starts_with(&self.tokens) {
            self.tokens.len()
        } else {
            if !self.tokens.is_empty() {
                tracing::debug!(
                    "the chat's rendering does not extend the {} tokens in the session; running \
                     it from the start",
                    self.tokens.len()
                );
            }
            self.reset();
            0
        };
        let mut answer = String::new();
        let mut stats = self.run_prompt(&ids[cached..], generation, cancel, &mut |text| {
            answer.push_str(text);
            on_text(text)
        })?;
        stats.cached_tokens = cached;
        stats.truncated_tokens = truncated;
        conversation.push(Message {
            role: Role::Assistant,
            content: answer,
        });
        self.messages = conversation;
        Ok(stats)
    }

    /// [`Session::generate`] from prompt token ids, after the session's tokens (a raw
    /// continuation: the session no longer holds a chat).
    pub fn generate_from_tokens(
        &mut self,
        prompt: &[u32],
        generation: &GenerationConfig,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationStats> {
        self.messages.clear();
        let capacity = self.cache.capacity();
        let room = capacity - self.cache.len();
        let mut prompt = prompt;
        let mut truncated_tokens = 0;
        if prompt.len() >= room {
            let overflow = Error::ContextOverflow {
                prompt: self.cache.len() + prompt.len(),
                context: capacity,
                max_new_tokens: generation.max_new_tokens,
            };
            let reserve = generation.max_new_tokens.clamp(1, (room / 2).max(1));
            let keep = room.saturating_sub(reserve);
            if generation.truncate == Truncate::Error || keep == 0 {
                return Err(overflow);
            }
            truncated_tokens = prompt.len() - keep;
            tracing::warn!(
                "prompt of {} tokens does not fit in the {room} free positions of the context: \
                 dropped its oldest {truncated_tokens} (generation.truncate = \"left\")",
                prompt.len()
            );
            prompt = &prompt[truncated_tokens..];
        }
        let mut stats = self.run_prompt(prompt, generation, cancel, on_text)?;
        stats.truncated_tokens = truncated_tokens;
        Ok(stats)
    }

    /// Runs `prompt` after the session's tokens and generates from it.
    fn run_prompt(
        &mut self,
        prompt: &[u32],
        generation: &GenerationConfig,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationStats> {
        let mut tokens = self.stream_tokens(prompt, generation, cancel.clone());
        for token in &mut tokens {
            on_text(&token?.text);
        }
        tokens.stats()
    }

    /// Generates from `prompt` (run after the session's tokens) as an iterator of tokens:
    /// the prompt runs at the first call to `next`, then each call decodes one token. Ends
    /// (`None`) when generation ends; [`TokenIter::stats`] then says why. A token whose text
    /// is held back (an incomplete character, a possible stop string) has an empty `text`;
    /// the held-back text comes with a later token, or a last event with no `id`.
    pub fn stream_tokens<'s>(
        &'s mut self,
        prompt: &[u32],
        generation: &GenerationConfig,
        cancel: CancelToken,
    ) -> TokenIter<'s, 'e, B> {
        let engine = self.engine.clone();
        TokenIter {
            session: self,
            prompt: prompt.to_vec(),
            generator: Generator::new(generation),
            engine,
            cancel,
            state: IterState::Prompt,
            prefill: Duration::ZERO,
            decode_start: None,
            error: None,
        }
    }

    /// [`Session::stream_tokens`] on a thread of its own, as an async stream (a
    /// `futures_core::Stream` of [`TokenEvent`]s) for async code: the session moves into the
    /// thread and comes back with the generation's stats from [`TokenStreamHandle::finish`].
    /// Dropping the stream cancels the generation after the current token.
    pub fn into_stream(
        self,
        prompt: Vec<u32>,
        generation: GenerationConfig,
    ) -> (
        async_channel::Receiver<Result<TokenEvent>>,
        TokenStreamHandle<B>,
    )
    where
        'e: 'static,
    {
        let (tx, rx) = async_channel::bounded(64);
        let cancel = CancelToken::new();
        let thread_cancel = cancel.clone();
        let thread = std::thread::spawn(move || {
            let mut session = self;
            let mut tokens = session.stream_tokens(&prompt, &generation, thread_cancel.clone());
            for token in &mut tokens {
                if tx.send_blocking(token).is_err() {
                    thread_cancel.cancel();
                }
            }
            let stats = tokens.stats();
            (session, stats)
        });
        (rx, TokenStreamHandle { thread, cancel })
    }
}

/// One generated token, as [`Session::stream_tokens`] yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// The token id; `None` for text released at the end of generation.
    pub id: Option<u32>,
    /// The text this token completed (may be empty, or span several tokens).
    pub text: String,
    /// Its log-probability and the likeliest alternatives', when
    /// [`GenerationConfig::logprobs`] asks for them.
    pub logprobs: Option<Logprobs>,
}

/// A sampled token's log-probability under the model (log-softmax of the raw logits) and
/// the `top` likeliest tokens' (most likely first).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// The sampled token's.
    pub logprob: f32,
    /// `(token, log-probability)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// `token`'s log-probability in `logits` and the `top` likeliest tokens'.
    pub fn of(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
        let norm = max + sum.ln() as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &v) in logits.iter().enumerate() {
                if best.len() < top || v > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, b)| b >= v);
                    best.insert(at, (i as u32, v));
                    best.truncate(top);
                }
            }
        }
        Self {
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |&v| v - norm),
            top: best.into_iter().map(|(i, v)| (i, v - norm)).collect(),
        }
    }
}

/// The thread of [`Session::into_stream`].
pub struct TokenStreamHandle<B: Backend> {
    thread: std::thread::JoinHandle<(Session<'static, B>, Result<GenerationStats>)>,
    cancel: CancelToken,
}

impl<B: Backend> TokenStreamHandle<B> {
    /// Stops the generation after the current token.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the generation to end; the session (to continue the conversation) and
    /// its stats.
    pub fn finish(self) -> Result<(Session<'static, B>, GenerationStats)> {
        match self.thread.join() {
            Ok((session, stats)) => Ok((session, stats?)),
            Err(_) => Err(Error::Backend("the generation thread panicked".into())),
        }
    }
}

enum IterState {
    Prompt,
    Decoding(Vec<f32>),
    Done(FinishReason),
}

/// The tokens of one generation ([`Session::stream_tokens`]).
pub struct TokenIter<'s, 'e, B: Backend> {
    /// Declared first: dropped before the session it borrows from.
    session: &'s mut Session<'e, B>,
    prompt: Vec<u32>,
    generator: Generator,
    engine: EngineRef<'e, B>,
    cancel: CancelToken,
    state: IterState,
    prefill: Duration,
    decode_start: Option<Instant>,
    error: Option<String>,
}

impl<B: Backend> TokenIter<'_, '_, B> {
    /// Counts and timings, once the iterator has ended; an error if it ended on one.
    pub fn stats(&self) -> Result<GenerationStats> {
        if let Some(e) = &self.error {
            return Err(Error::Backend(e.clone()));
        }
        let IterState::Done(finish) = self.state else {
            return Err(Error::Backend("the generation has not ended".into()));
        };
        Ok(GenerationStats {
            prompt_tokens: self.prompt.len(),
            cached_tokens: 0,
            truncated_tokens: 0,
            prefill: self.prefill,
            generated_tokens: self.generator.generated.len(),
            decode: self.decode_start.map(|s| s.elapsed()).unwrap_or_default(),
            finish,
            tokens: self.generator.generated.clone(),
        })
    }

    fn advance(&mut self) -> Result<Option<TokenEvent>> {
        let logits = match std::mem::replace(&mut self.state, IterState::Done(FinishReason::Eos)) {
            IterState::Done(finish) => {
                self.state = IterState::Done(finish);
                return Ok(None);
            }
            IterState::Prompt => {
                let start = Instant::now();
                let logits = self.session.prefill(&self.prompt)?;
                self.prefill = start.elapsed();
                self.decode_start = Some(Instant::now());
                logits
            }
            IterState::Decoding(logits) => logits,
        };
        let mut logits = logits;
        let full = self.session.cache.len() >= self.session.cache.capacity();
        let out = if self.cancel.is_cancelled() {
            self.generator.cancel(&self.engine.tokenizer)?
        } else {
            self.generator.next(
                &self.engine.tokenizer,
                &mut logits,
                &self.session.tokens,
                || full,
            )?
        };
        match out.finish {
            Some(finish) => self.state = IterState::Done(finish),
            None => {
                let id = out.token.unwrap_or_default();
                self.state = IterState::Decoding(self.session.decode(id)?);
            }
        }
        if out.token.is_none() && out.text.is_empty() {
            return Ok(None);
        }
        Ok(Some(TokenEvent {
            id: out.token,
            text: out.text,
            logprobs: out.logprobs,
        }))
    }
}

impl<B: Backend> Iterator for TokenIter<'_, '_, B> {
    type Item = Result<TokenEvent>;

    fn next(&mut self) -> Option<Result<TokenEvent>> {
        if self.error.is_some() {
            return None;
        }
        match self.advance() {
            Ok(event) => event.map(Ok),
            Err(e) => {
                self.error = Some(e.to_string());
                self.state = IterState::Done(FinishReason::Cancelled);
                Some(Err(e))
            }
        }
    }
}

/// What [`Generator::next`] produced from one position's logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Produced {
    /// The sampled token, unless generation ended before one (end of sequence, cancelled).
    pub token: Option<u32>,
    /// Text that became final with it (may be empty).
    pub text: String,
    /// Why generation ended, when it did; then the token (if any) is not to be run.
    pub finish: Option<FinishReason>,
    /// The token's log-probabilities, when the generation asks for them.
    pub logprobs: Option<Logprobs>,
}

/// The per-sequence part of generation, apart from the model: sampling, detokenizing,
/// stop strings and limits. A [`Session`] drives one; a server's scheduler drives one per
/// sequence of its batch.
#[derive(Debug)]
pub struct Generator {
    sampler: Sampler,
    stream: TokenStream,
    stops: Vec<String>,
    pending: String,
    max_new_tokens: usize,
    generated: Vec<u32>,
    logprobs: Option<usize>,
}

impl Generator {
    /// A generator with `generation`'s sampler, stop strings and `max_new_tokens`.
    pub fn new(generation: &GenerationConfig) -> Self {
        Self {
            sampler: Sampler::new(generation),
            stream: TokenStream::new(),
            stops: generation.stop.clone(),
            pending: String::new(),
            max_new_tokens: generation.max_new_tokens,
            generated: Vec::new(),
            logprobs: generation
                .logprobs
                .map(|n| n.min(crate::config::MAX_TOP_LOGPROBS)),
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Samples the next token from `logits` (the sequence's `context`, prompt and generated
    /// tokens, for the repetition penalty) and says whether generation ends there: end of
    /// sequence, a stop string, `max_new_tokens`, or `full()` (the context has no room to
    /// run the token). Non-finite logits are an error.
    pub fn next(
        &mut self,
        tokenizer: &TextTokenizer,
        logits: &mut [f32],
        context: &[u32],
        full: impl FnOnce() -> bool,
    ) -> Result<Produced> {
        Error::check_finite(logits, || {
            format!(
                "the logits after token {} of the sequence (generated: {})",
                context.len(),
                self.generated.len()
            )
        })?;
        // The model's distribution, before sampling scales and filters the logits in place.
        let raw = self.logprobs.map(|_| logits.to_vec());
        let token = self.sampler.sample(logits, context);
        let logprobs = raw.map(|raw| Logprobs::of(&raw, token, self.logprobs.unwrap_or(0)));
        if tokenizer.eos_ids().contains(&token) {
            return self.end(tokenizer, None, FinishReason::Eos);
        }
        let produced = self.produce(tokenizer, token, full)?;
        Ok(Produced {
            logprobs,
            ..produced
        })
    }

    /// [`Generator::next`] after sampling `token` (not an end of sequence).
    fn produce(
        &mut self,
        tokenizer: &TextTokenizer,
        token: u32,
        full: impl FnOnce() -> bool,
    ) -> Result<Produced> {
        self.generated.push(token);
        let mut text = String::new();
        if let Some(piece) = self.stream.push(tokenizer, token)? {
            let mut stops = StopMatcher {
                stops: &self.stops,
                pending: std::mem::take(&mut self.pending),
            };
            let stopped = stops.push(&piece, &mut |t| text.push_str(t));
            self.pending = stops.pending;
            if stopped {
                return Ok(Produced {
                    token: Some(token),
                    text,
                    finish: Some(FinishReason::Stop),
                    logprobs: None,
                });
            }
        }
        let finish = if self.generated.len() >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else if full() {
            Some(FinishReason::Context)
        } else {
            None
        };
        match finish {
            Some(finish) => {
                let mut end = self.end(tokenizer, Some(token), finish)?;
                end.text.insert_str(0, &text);
                Ok(end)
            }
            None => Ok(Produced {
                token: Some(token),
                text,
                finish: None,
                logprobs: None,
            }),
        }
    }

    /// Ends generation here (cancelled): the text held back so far.
    pub fn cancel(&mut self, tokenizer: &TextTokenizer) -> Result<Produced> {
        self.end(tokenizer, None, FinishReason::Cancelled)
    }

    /// The end of generation with `token` (if one was sampled): releases the text held back.
    fn end(
        &mut self,
        tokenizer: &TextTokenizer,
        token: Option<u32>,
        finish: FinishReason,
    ) -> Result<Produced> {
        let mut text = String::new();
        let mut stops = StopMatcher {
            stops: &self.stops,
            pending: std::mem::take(&mut self.pending),
        };
        if let Some(piece) = self.stream.flush(tokenizer)? {
            if stops.push(&piece, &mut |t| text.push_str(t)) {
                return Ok(Produced {
                    token,
                    text,
                    finish: Some(FinishReason::Stop),
                    logprobs: None,
                });
            }
        }
        stops.finish(&mut |t| text.push_str(t));
        Ok(Produced {
            token,
            text,
            finish: Some(finish),
            logprobs: None,
        })
    }
}

/// Drops the oldest message of `conversation` that is neither a system message nor the last
/// one, and the assistant answers right after it (a chat starts with a user turn); false
/// when there is none.
fn drop_oldest_turn(conversation: &mut Vec<Message>) -> bool {
    let last = conversation.len().saturating_sub(1);
    let Some(first) = conversation[..last]
        .iter()
        .position(|m| m.role != Role::System)
    else {
        return false;
    };
    conversation.remove(first);
    while first + 1 < conversation.len() && conversation[first].role == Role::Assistant {
        conversation.remove(first);
    }
    true
}

impl<B: Backend> Replay<B> {
    /// Logits after token `id` at position `pos`: a replay of the step recorded for this
    /// window, or (first time, or the cache moved) the step run eagerly, then recorded.
    fn decode(
        &mut self,
        engine: &Engine<B>,
        cache: &mut KvCache<B>,
        id: u32,
        pos: usize,
    ) -> Result<Vec<f32>> {
        let window = cache.decode_window(pos + 1);
        // The memory the step writes, allocated before its addresses are taken.
        cache.reserve(window);
        let graphs = self.graphs.as_ref();
        let _scope = self.stream.enter()?;
        graphs.write_ints(&self.step, &[i64::from(id), pos as i64])?;
        let addresses = cache.addresses(graphs);
        if let Some(r) = self
            .recorded
            .iter()
            .find(|r| r.window == window && r.addresses == addresses)
        {
            r.graph.replay()?;
            return Ok(r.logits.clone().into_data().iter::<f32>().collect());
        }
        self.recorded.retain(|r| r.window != window);
        let (model, attention) = (engine.model.as_ref(), engine.attention);
        // The model's forward pass at the position held in `step`, keys and values written
        // in place.
        let step = &self.step;
        let run = |cache: &mut KvCache<B>| {
            cache.next_at(
                step.clone().narrow(0, 1, 1),
                window,
                Some(self.graphs.clone()),
            );
            let token = step.clone().narrow(0, 0, 1).reshape([1, 1]);
            model.forward(token, cache, attention, Logits::Last)
        };
        // Eagerly first: this token's logits, and the warm-up a recording needs (kernels
        // loaded, libraries' workspaces allocated). Recording runs nothing.
        let logits: Vec<f32> = run(cache)?.into_data().iter::<f32>().collect();
        self.stream.begin()?;
        let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cache)));
        let graph = self.stream.end();
        let out = match recorded {
            Ok(out) => out?,
            Err(_) => {
                return Err(Error::Backend(
                    "an operation of the decode step cannot be recorded as a graph".into(),
                ))
            }
        };
        let graph = graph?;
        if cache.addresses(graphs) != addresses {
            return Err(Error::Backend(
                "the KV cache moved while the decode step was recorded".into(),
            ));
        }
        self.recorded.push(Recorded {
            window,
            graph,
            logits: out,
            addresses,
        });
        Ok(logits)
    }
}

/// Streams text while holding back any tail that could still become a stop string.
struct StopMatcher<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopMatcher<'a> {
    #[cfg(test)]
    fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            pending: String::new(),
        }
    }

    /// Adds `piece`; emits what is safe; returns true when a stop string was reached.
    fn push(&mut self, piece: &str, emit: &mut dyn FnMut(&str)) -> bool {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            if at > 0 {
                emit(&self.pending[..at]);
            }
            self.pending.clear();
            return true;
        }
        // Longest suffix of `pending` that is a proper prefix of some stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        if cut > 0 {
            emit(&self.pending[..cut]);
            self.pending.drain(..cut);
        }
        false
    }

    fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            if m.push(p, &mut |s| out.push_str(s)) {
                return (out, true);
            }
        }
        m.finish(&mut |s| out.push_str(s));
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_not_printed() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_diverges() {
        assert_eq!(run(&["END"], &["hello E", "x"]), ("hello Ex".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
