//! Continuous batching: one engine, many sequences, on one thread of its own (burn's
//! backends are not async).
//!
//! Requests wait in a bounded queue (a full queue is the HTTP side's 429) and join the
//! running batch between two forward steps, when one of its `parallel` slots is free. Each
//! step runs every active sequence's next tokens in one forward pass
//! ([`ember::models::DecoderModel::forward_many`]): one token for a sequence that is
//! decoding, the next chunk of its prompt for one that is not (`prefill_chunk` prompt tokens
//! per step in all, so that a long prompt does not stall the others). Each sequence has its
//! own KV cache, positions and mask; the weights' products run once over all the step's
//! tokens. A sequence leaves the batch when it ends, when its client goes away (its event
//! channel closed: checked before every step), at its deadline, or on an error or a panic in
//! its step, which is reported to that request alone: a failed batched step is run again one
//! sequence at a time to find the culprit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use ember::nn::kv_cache::KvCache;
use ember::{Engine, FinishReason, GenerationConfig, Generator};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// A generation request, tokenized, as the HTTP side hands it to the scheduler.
pub struct Request {
    /// Prompt token ids (fits in the context: the HTTP side checked).
    pub prompt: Vec<u32>,
    /// Sampler, stop strings and `max_new_tokens`.
    pub generation: GenerationConfig,
    /// Where the request's events go; closed when the client went away.
    pub events: UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub received: Instant,
    /// When it is cut off, if ever.
    pub deadline: Option<Instant>,
}

/// What the scheduler tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completed (may be empty).
    Token {
        /// Its id.
        id: Option<u32>,
        /// Its text.
        text: String,
    },
    /// The end: why, and the token counts of `usage`.
    Done {
        /// Why generation ended.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// The request failed (after zero or more tokens).
    Error {
        /// HTTP status for an answer not yet started.
        status: u16,
        /// What went wrong.
        message: String,
    },
}

/// A test's hook: called with each sequence's prompt before every step it is in; a panic
/// inside it stands for a panic in that sequence's step.
pub type FaultHook = Arc<dyn Fn(&[u32]) + Send + Sync>;

/// How the scheduler batches.
#[derive(Clone)]
pub struct SchedulerOptions {
    /// Sequences in the batch at most (`--parallel`).
    pub parallel: usize,
    /// Prompt tokens run per step at most, over every sequence still in its prompt.
    pub prefill_chunk: usize,
    /// Positions by which a sequence's KV cache grows (0: the whole context at once).
    pub cache_block: usize,
    /// After shutdown is asked, how long running sequences may finish before they are cut.
    pub shutdown_grace: Duration,
    /// A test's fault injection.
    pub fault: Option<FaultHook>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            parallel: 4,
            prefill_chunk: 256,
            cache_block: 256,
            shutdown_grace: Duration::from_secs(10),
            fault: None,
        }
    }
}

struct Seq<B: Backend> {
    request: Request,
    cache: KvCache<B>,
    /// Tokens in the cache.
    tokens: Vec<u32>,
    /// The token to run next once the prompt is in (the last one sampled).
    next: Option<u32>,
    generator: Generator,
    last_token: Option<Instant>,
}

impl<B: Backend> Seq<B> {
    fn prefilling(&self) -> bool {
        self.tokens.len() < self.request.prompt.len()
    }
}

/// Runs the batch loop of `engine` until `shutdown` is set and the batch has drained (or
/// its grace period ran out), or every sender of `queue` is gone.
pub fn run<B: Backend>(
    engine: Arc<Engine<B>>,
    queue: Receiver<Request>,
    metrics: Arc<Metrics>,
    options: SchedulerOptions,
    shutdown: Arc<AtomicBool>,
) {
    let mut active: Vec<Seq<B>> = Vec::new();
    let mut shutdown_at: Option<Instant> = None;
    let parallel = options.parallel.max(1);
    loop {
        if shutdown.load(Ordering::SeqCst) {
            let since = *shutdown_at.get_or_insert_with(Instant::now);
            // Nothing new joins; what waits is answered at once.
            while let Ok(r) = queue.try_recv() {
                metrics.queue_depth.dec();
                metrics.finish("shutdown");
                let _ = r.events.send(Event::Error {
                    status: 503,
                    message: "the server is shutting down".into(),
                });
            }
            if since.elapsed() >= options.shutdown_grace {
                for seq in active.drain(..) {
                    metrics.finish("shutdown");
                    let _ = seq.request.events.send(Event::Error {
                        status: 503,
                        message: "the server shut down before the answer was complete".into(),
                    });
                }
            }
            if active.is_empty() {
                break;
            }
        } else {
            // Admit waiting requests into free slots; block when there is nothing to do.
            let mut disconnected = false;
            while active.len() < parallel {
                let next = if active.is_empty() {
                    match queue.recv_timeout(Duration::from_millis(50)) {
                        Ok(r) => Some(r),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            disconnected = true;
                            None
                        }
                    }
                } else {
                    match queue.try_recv() {
                        Ok(r) => Some(r),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            None
                        }
                    }
                };
                let Some(request) = next else { break };
                metrics.queue_depth.dec();
                if request.events.is_closed() {
                    metrics.finish("cancelled");
                    continue;
                }
                let cache = engine.new_cache_growing(options.cache_block);
                active.push(Seq {
                    generator: Generator::new(&request.generation),
                    tokens: Vec::with_capacity(request.prompt.len() + 16),
                    request,
                    cache,
                    next: None,
                    last_token: None,
                });
            }
            if disconnected && active.is_empty() {
                break;
            }
        }
        // Drop sequences whose client went away or whose time is up.
        let now = Instant::now();
        active.retain(|seq| {
            if seq.request.events.is_closed() {
                metrics.finish("cancelled");
                return false;
            }
            if seq.request.deadline.is_some_and(|d| now >= d) {
                metrics.finish("timeout");
                let _ = seq.request.events.send(Event::Error {
                    status: 504,
                    message: "the request ran past the server's --request-timeout".into(),
                });
                return false;
            }
            true
        });
        metrics.active.set(active.len() as i64);
        if active.is_empty() {
            continue;
        }
        step(&engine, &mut active, &metrics, &options);
        metrics.active.set(active.len() as i64);
    }
    metrics.active.set(0);
}

/// One forward step over the batch, then sampling for every sequence that has logits.
fn step<B: Backend>(
    engine: &Engine<B>,
    active: &mut Vec<Seq<B>>,
    metrics: &Metrics,
    options: &SchedulerOptions,
) {
    // Each sequence's chunk this step: its next token, or the next part of its prompt
    // within the step's prefill budget.
    let mut budget = options.prefill_chunk.max(1);
    let mut chunks: Vec<(usize, Vec<u32>)> = Vec::with_capacity(active.len());
    for (i, seq) in active.iter().enumerate() {
        if seq.prefilling() {
            if budget == 0 {
                continue;
            }
            let from = seq.tokens.len();
            let take = (seq.request.prompt.len() - from).min(budget);
            budget -= take;
            chunks.push((i, seq.request.prompt[from..from + take].to_vec()));
        } else if let Some(next) = seq.next {
            chunks.push((i, vec![next]));
        }
    }
    if chunks.is_empty() {
        return;
    }
    metrics.batch_size.observe(chunks.len() as f64);
    metrics
        .step_tokens
        .observe(chunks.iter().map(|(_, c)| c.len()).sum::<usize>() as f64);
    let vocab = engine.model().vocab_size();
    // The whole batch in one pass; if it fails, each sequence alone, so that only the one at
    // fault is dropped.
    let mut results: Vec<(usize, Result<Vec<f32>, String>)> =
        match run_chunks(engine, active, &chunks, options) {
            Ok(logits) => chunks
                .iter()
                .zip(logits.chunks_exact(vocab))
                .map(|((i, _), l)| (*i, Ok(l.to_vec())))
                .collect(),
            Err(e) if chunks.len() == 1 => vec![(chunks[0].0, Err(e))],
            Err(e) => {
                tracing::warn!("a batched step failed ({e}); running its sequences one by one");
                chunks
                    .iter()
                    .map(|chunk| {
                        let one = std::slice::from_ref(chunk);
                        (chunk.0, run_chunks(engine, active, one, options))
                    })
                    .collect()
            }
        };
    let tokenizer = engine.tokenizer();
    let now = Instant::now();
    let mut finished = vec![false; active.len()];
    for ((i, result), (_, chunk)) in results.iter_mut().zip(&chunks) {
        let seq = &mut active[*i];
        let mut logits = match result {
            Ok(l) => std::mem::take(l),
            Err(message) => {
                metrics.finish("error");
                let _ = seq.request.events.send(Event::Error {
                    status: 500,
                    message: format!("the model failed on this request: {message}"),
                });
                finished[*i] = true;
                continue;
            }
        };
        let was_prefill = seq.prefilling();
        seq.tokens.extend_from_slice(chunk);
        if was_prefill {
            metrics.prompt_tokens.inc_by(chunk.len() as u64);
            if seq.prefilling() {
                continue;
            }
        }
        let full = seq.cache.len() >= seq.cache.capacity();
        let produced = match seq
            .generator
            .next(tokenizer, &mut logits, &seq.tokens, || full)
        {
            Ok(p) => p,
            Err(e) => {
                metrics.finish("error");
                let _ = seq.request.events.send(Event::Error {
                    status: 500,
                    message: e.to_string(),
                });
                finished[*i] = true;
                continue;
            }
        };
        if produced.token.is_some() {
            metrics.generated_tokens.inc();
            match seq.last_token {
                None => metrics
                    .ttft
                    .observe(now.duration_since(seq.request.received).as_secs_f64()),
                Some(last) => metrics
                    .per_token
                    .observe(now.duration_since(last).as_secs_f64()),
            }
            seq.last_token = Some(now);
        }
        if produced.token.is_some() || !produced.text.is_empty() {
            let _ = seq.request.events.send(Event::Token {
                id: produced.token,
                text: produced.text,
            });
        }
        match produced.finish {
            Some(finish) => {
                metrics.finish(crate::api::finish_reason(finish));
                let _ = seq.request.events.send(Event::Done {
                    finish,
                    prompt_tokens: seq.request.prompt.len(),
                    completion_tokens: seq.generator.generated().len(),
                });
                finished[*i] = true;
            }
            None => seq.next = produced.token,
        }
    }
    let mut index = 0;
    active.retain(|_| {
        index += 1;
        !finished[index - 1]
    });
}

/// Runs `chunks` (sequence index, tokens) in one forward pass: their last tokens' logits,
/// `[chunks, vocab]` flattened; an error or a panic as a message.
fn run_chunks<B: Backend>(
    engine: &Engine<B>,
    active: &mut [Seq<B>],
    chunks: &[(usize, Vec<u32>)],
    options: &SchedulerOptions,
) -> Result<Vec<f32>, String> {
    let run = AssertUnwindSafe(|| -> Result<Vec<f32>, String> {
        if let Some(fault) = &options.fault {
            for (i, _) in chunks {
                fault(&active[*i].request.prompt);
            }
        }
        let ids: Vec<&[u32]> = chunks.iter().map(|(_, c)| c.as_slice()).collect();
        let mut caches: Vec<&mut KvCache<B>> = active
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| chunks.iter().any(|(c, _)| c == i))
            .map(|(_, s)| &mut s.cache)
            .collect();
        let logits = engine
            .model()
            .forward_many(&ids, &mut caches, engine.attention())
            .map_err(|e| e.to_string())?;
        Ok(logits.into_data().iter::<f32>().collect())
    });
    match catch_unwind(run) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("a forward step panicked: {what}");
            Err(format!("internal error (panic: {what})"))
        }
    }
}
