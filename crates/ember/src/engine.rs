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
        Session {
            engine: self,
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

/// One conversation: its KV cache and the tokens in it.
pub struct Session<'e, B: Backend> {
    engine: &'e Engine<B>,
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

impl<B: Backend> Session<'_, B> {
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
            let engine = self.engine;
            match replay.decode(engine, &mut self.cache, *id, pos) {
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
        let capacity = self.cache.capacity();
        let tokenizer = &self.engine.tokenizer;
        let mut sampler = Sampler::new(generation);
        let mut stream = TokenStream::new();
        let mut stops = StopMatcher::new(&generation.stop);
        let start = Instant::now();
        let mut logits = self.prefill(prompt)?;
        let prefill = start.elapsed();
        let decode_start = Instant::now();
        let mut generated = Vec::new();
        let finish = loop {
            if cancel.is_cancelled() {
                break FinishReason::Cancelled;
            }
            Error::check_finite(&logits, || {
                format!(
                    "the logits after token {} of the session (generated: {})",
                    self.tokens.len(),
                    generated.len()
                )
            })?;
            let token = sampler.sample(&mut logits, &self.tokens);
            if tokenizer.eos_ids().contains(&token) {
                break FinishReason::Eos;
            }
            generated.push(token);
            if let Some(piece) = stream.push(tokenizer, token)? {
                if stops.push(&piece, on_text) {
                    break FinishReason::Stop;
                }
            }
            if generated.len() >= generation.max_new_tokens {
                break FinishReason::Length;
            }
            if self.cache.len() >= capacity {
                break FinishReason::Context;
            }
            logits = self.decode(token)?;
        };
        if finish != FinishReason::Stop {
            if let Some(piece) = stream.flush(tokenizer)? {
                stops.push(&piece, on_text);
            }
            stops.finish(on_text);
        }
        Ok(GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: 0,
            truncated_tokens: 0,
            prefill,
            generated_tokens: generated.len(),
            decode: decode_start.elapsed(),
            finish,
            tokens: generated,
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
