//! Continuous batching: one engine, many sequences, on one thread of its own (burn's
//! backends are not async).
//!
//! Requests wait in a bounded queue and join the
//! running batch between two forward steps, when one of its `parallel` slots is free. The
//! sequences share one KV cache whose batch rows are the slots
//! ([`Engine::new_slot_cache`]), each row at its own length. A step runs every decoding
//! sequence's next token in one forward pass (tokens `[rows, 1]`, each row at its own
//! position, with its own rotary angles and mask: [`KvCache::next_rows`]), then the next
//! chunk of each prompt still being read, within `prefill_chunk` tokens per step in all
//! ([`KvCache::next_row`]), so that a long prompt does not stall the others. A sequence
//! leaves the batch when it ends, when its client goes away (its event channel closed:
//! checked before every step), at its deadline, or on an error or a panic in its step,
//! which is reported to that request alone: a failed batched step is run again one
//! sequence at a time to find the culprit.
//!
//! A slot's row keeps the keys and values of its tokens after its sequence leaves. A new
//! request takes the free row whose tokens share the longest prefix with its prompt, and
//! before each of its prompt chunks copies a longer shared prefix from any other row
//! ([`KvCache::copy_prefix`]: a prompt that arrived with others prefilled first), so its
//! prefill starts after that prefix (a chat template's system prompt is the common case;
//! `SchedulerOptions::prefix_cache`). The keys and values of a position depend only on the
//! tokens up to it, so the answer is the one a full prefill gives.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::TensorData;
use ember::models::Logits;
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
    /// Its place in the model's bound, held until the request is dropped.
    pub place: Place,
}

/// A request's place among its model's `--parallel` running and `--queue` waiting ones (the
/// HTTP side answers 429 when none is left), given back when the request is dropped:
/// finished, failed, cancelled or refused at shutdown alike.
///
/// Why not the channel's own bound: a request the scheduler is about to admit into a free
/// slot still sits in the channel, so with the channel as the bound, `--parallel 2 --queue
/// 2` refused a third request that arrived before the scheduler's thread woke up (seen on a
/// loaded 2-core machine).
pub struct Place(Option<Arc<AtomicUsize>>);

impl Place {
    /// A place if fewer than `limit` of `held` are taken, else `None`.
    pub fn take(held: &Arc<AtomicUsize>, limit: usize) -> Option<Place> {
        held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Place(Some(held.clone())))
    }

    /// A place outside any bound (a caller that bounds its requests itself).
    pub fn unbounded() -> Place {
        Place(None)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(held) = &self.0 {
            held.fetch_sub(1, Ordering::SeqCst);
        }
    }
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
        /// Its log-probabilities, when the request asked for them.
        logprobs: Option<crate::api::TokenLogprobs>,
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
    /// Reuse the keys and values of a prompt prefix that a slot's row already holds
    /// (`ember serve --no-prefix-cache` turns it off).
    pub prefix_cache: bool,
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
            prefix_cache: true,
            fault: None,
        }
    }
}

struct Seq {
    request: Request,
    /// Its row of the slot cache.
    row: usize,
    /// Tokens in its row of the cache.
    tokens: Vec<u32>,
    /// The token to run next once the prompt is in (the last one sampled).
    next: Option<u32>,
    generator: Generator,
    last_token: Option<Instant>,
}

impl Seq {
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
    let mut active: Vec<Seq> = Vec::new();
    let mut shutdown_at: Option<Instant> = None;
    let parallel = options.parallel.max(1);
    let mut cache = engine.new_slot_cache(parallel, options.cache_block);
    // Per row: the tokens whose keys and values the row holds, at positions 0..len.
    let mut cached: Vec<Vec<u32>> = vec![Vec::new(); parallel];
    loop {
        if shutdown.load(Ordering::SeqCst) {
            let since = *shutdown_at.get_or_insert_with(Instant::now);
            // Nothing new joins; what waits is answered at once.
            refuse_waiting(&queue, &metrics);
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
                let free: Vec<usize> = (0..parallel)
                    .filter(|r| active.iter().all(|s| s.row != *r))
                    .collect();
                let (row, reused) =
                    place(&mut cached, &free, &request.prompt, options.prefix_cache);
                metrics.prompt_tokens_cached.inc_by(reused as u64);
                let mut tokens = Vec::with_capacity(request.prompt.len() + 16);
                tokens.extend_from_slice(&request.prompt[..reused]);
                active.push(Seq {
                    generator: Generator::new(&request.generation),
                    tokens,
                    request,
                    row,
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
        step(
            &engine,
            &mut cache,
            &mut cached,
            &mut active,
            &metrics,
            &options,
        );
        metrics.active.set(active.len() as i64);
    }
    // A request queued between the last drain and now (it passed the HTTP side's shutdown
    // check just before the flag was set) is answered, not dropped with the channel.
    refuse_waiting(&queue, &metrics);
    metrics.active.set(0);
}

/// How many first tokens of `prompt` the row holding `kept` can reuse: their common prefix,
/// at most all but the prompt's last token (whose logits the prefill must still compute).
fn shared(kept: &[u32], prompt: &[u32]) -> usize {
    let common = kept.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    common.min(prompt.len().saturating_sub(1))
}

/// Of `rows`, the one whose kept tokens share the longest prefix with `prompt` ([`shared`];
/// ties: the first listed), and that prefix's length; `None` without rows.
fn longest_prefix(
    cached: &[Vec<u32>],
    rows: impl DoubleEndedIterator<Item = usize>,
    prompt: &[u32],
) -> Option<(usize, usize)> {
    rows.map(|r| (r, shared(&cached[r], prompt)))
        .rev()
        .max_by_key(|&(_, len)| len)
}

/// The free row (of `free`, never empty: a request is admitted only into a free slot) for
/// `prompt`, and how many of its first tokens that row holds already: the free row whose
/// kept tokens share the longest prefix with the prompt (ties: the lowest). Without
/// `reuse`, the first free row and 0. A longer prefix in another row is copied when the
/// prompt's prefill starts ([`reuse_prefix`]).
fn place(cached: &mut [Vec<u32>], free: &[usize], prompt: &[u32], reuse: bool) -> (usize, usize) {
    let first = (free.first().copied().unwrap_or_default(), 0);
    let (row, len) = if reuse {
        longest_prefix(cached, free.iter().copied(), prompt).unwrap_or(first)
    } else {
        first
    };
    cached[row].truncate(len);
    (row, len)
}

/// Before `seq`'s next prompt chunk: where another row holds a longer prefix of its prompt
/// than its own row (a request that arrived with others sharing its system prompt, whose
/// prefill ran first), copies that prefix into its row ([`KvCache::copy_prefix`]); the
/// number of prompt tokens that no longer need to run.
fn reuse_prefix<B: Backend>(
    cache: &mut KvCache<B>,
    cached: &mut [Vec<u32>],
    seq: &mut Seq,
) -> usize {
    let (have, prompt) = (seq.tokens.len(), &seq.request.prompt);
    let others = (0..cached.len()).filter(|&r| r != seq.row);
    let Some((from, best)) = longest_prefix(cached, others, prompt) else {
        return 0;
    };
    if best <= have {
        return 0;
    }
    if let Err(e) = cache.copy_prefix(from, seq.row, best) {
        // Checked before anything is written: the row is as it was.
        tracing::warn!("prompt prefix not reused: {e}");
        return 0;
    }
    seq.tokens.clear();
    seq.tokens.extend_from_slice(&prompt[..best]);
    cached[seq.row].clone_from(&seq.tokens);
    best - have
}

/// Answers every request waiting in `queue` with 503: the server is shutting down.
fn refuse_waiting(queue: &Receiver<Request>, metrics: &Metrics) {
    while let Ok(r) = queue.try_recv() {
        metrics.queue_depth.dec();
        metrics.finish("shutdown");
        let _ = r.events.send(Event::Error {
            status: 503,
            message: "the server is shutting down".into(),
        });
    }
}

/// What one sequence's part of a step gave: the logits of its last token, or an error.
type Outcome = Result<Vec<f32>, String>;

/// One step over the batch: every decoding sequence's next token in one forward pass, then
/// prompt chunks within the prefill budget; then sampling for every sequence with logits.
fn step<B: Backend>(
    engine: &Engine<B>,
    cache: &mut KvCache<B>,
    cached: &mut [Vec<u32>],
    active: &mut Vec<Seq>,
    metrics: &Metrics,
    options: &SchedulerOptions,
) {
    let vocab = engine.model().vocab_size();
    // (index in `active`, tokens run this step, outcome)
    let mut results: Vec<(usize, Vec<u32>, Outcome)> = Vec::new();
    let decoding: Vec<usize> = (0..active.len())
        .filter(|&i| !active[i].prefilling() && active[i].next.is_some())
        .collect();
    if !decoding.is_empty() {
        let rows = decoding.iter().map(|&i| active[i].row).max().unwrap_or(0) + 1;
        // Rows of sequences still reading their prompt run a placeholder at their next
        // position (which their next chunk overwrites). Free rows run one past the tokens
        // they keep for a later prompt, but not past the decoding rows (the step's window):
        // a row that held more keeps the prefix before that position.
        let last = decoding
            .iter()
            .map(|&i| active[i].tokens.len())
            .max()
            .unwrap_or(0);
        let mut positions = vec![0; rows];
        for (p, kept) in positions.iter_mut().zip(cached.iter_mut()) {
            kept.truncate(last);
            *p = kept.len();
        }
        let mut tokens = vec![0u32; rows];
        for seq in active.iter().filter(|s| s.row < rows) {
            positions[seq.row] = seq.tokens.len();
            if let (false, Some(next)) = (seq.prefilling(), seq.next) {
                tokens[seq.row] = next;
            }
        }
        let run = run_step(engine, cache, active, &decoding, options, |cache| {
            cache.next_rows(positions.clone());
            (tokens.clone(), [rows, 1])
        });
        match run {
            Ok(logits) => {
                for &i in &decoding {
                    let row = active[i].row;
                    let l = logits[row * vocab..(row + 1) * vocab].to_vec();
                    results.push((i, vec![tokens[row]], Ok(l)));
                }
            }
            Err(e) => {
                if decoding.len() > 1 {
                    tracing::warn!("a batched step failed ({e}); running its sequences one by one");
                }
                for &i in &decoding {
                    let (row, pos, token) =
                        (active[i].row, active[i].tokens.len(), tokens[active[i].row]);
                    let outcome = if decoding.len() == 1 {
                        Err(e.clone())
                    } else {
                        run_step(engine, cache, active, &[i], options, |cache| {
                            cache.next_row(row, pos);
                            (vec![token], [1, 1])
                        })
                    };
                    results.push((i, vec![token], outcome));
                }
            }
        }
    }
    let mut budget = options.prefill_chunk.max(1);
    for i in 0..active.len() {
        if budget == 0 {
            break;
        }
        if !active[i].prefilling() {
            continue;
        }
        if options.prefix_cache {
            let reused = reuse_prefix(cache, cached, &mut active[i]);
            metrics.prompt_tokens_cached.inc_by(reused as u64);
        }
        let seq = &active[i];
        let from = seq.tokens.len();
        let take = (seq.request.prompt.len() - from).min(budget);
        budget -= take;
        let chunk = seq.request.prompt[from..from + take].to_vec();
        let row = seq.row;
        let outcome = run_step(engine, cache, active, &[i], options, |cache| {
            cache.next_row(row, from);
            (chunk.clone(), [1, chunk.len()])
        });
        if outcome.is_ok() {
            // At once, so that a later prompt of this step can reuse it.
            cached[row].clone_from(&active[i].tokens);
            cached[row].extend_from_slice(&chunk);
        }
        results.push((i, chunk, outcome));
    }
    if results.is_empty() {
        return;
    }
    metrics.batch_size.observe(results.len() as f64);
    metrics
        .step_tokens
        .observe(results.iter().map(|(_, c, _)| c.len()).sum::<usize>() as f64);
    let tokenizer = engine.tokenizer();
    let capacity = engine.context_length();
    let now = Instant::now();
    let mut finished = vec![false; active.len()];
    for (i, chunk, result) in results {
        let seq = &mut active[i];
        let mut logits = match result {
            Ok(l) => l,
            Err(message) => {
                // What the failed step wrote in the row is not known.
                cached[seq.row].clear();
                metrics.finish("error");
                let _ = seq.request.events.send(Event::Error {
                    status: 500,
                    message: format!("the model failed on this request: {message}"),
                });
                finished[i] = true;
                continue;
            }
        };
        let was_prefill = seq.prefilling();
        seq.tokens.extend_from_slice(&chunk);
        cached[seq.row].clone_from(&seq.tokens);
        if was_prefill {
            metrics.prompt_tokens.inc_by(chunk.len() as u64);
            if seq.prefilling() {
                continue;
            }
        }
        let full = seq.tokens.len() >= capacity;
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
                finished[i] = true;
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
            let logprobs = produced.logprobs.map(|lp| {
                // A token alone may be part of a character: its text is then lossy.
                let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
                crate::api::TokenLogprobs {
                    token: produced.token.map(text).unwrap_or_default(),
                    logprob: lp.logprob,
                    top: lp.top.iter().map(|&(id, p)| (text(id), p)).collect(),
                }
            });
            let _ = seq.request.events.send(Event::Token {
                id: produced.token,
                text: produced.text,
                logprobs,
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
                finished[i] = true;
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

/// Runs one forward pass: `prepare` sets the cache's rows for the step and returns the
/// tokens and their shape (`[rows, 1]`: one per row; `[1, len]`: one row's chunk); the
/// logits of each row's last token,
/// `[rows, vocab]` flattened. An error or a panic comes back as a message; `members` (the
/// sequences in the step) are shown to the test's fault hook first.
fn run_step<B: Backend>(
    engine: &Engine<B>,
    cache: &mut KvCache<B>,
    active: &[Seq],
    members: &[usize],
    options: &SchedulerOptions,
    prepare: impl FnOnce(&mut KvCache<B>) -> (Vec<u32>, [usize; 2]),
) -> Result<Vec<f32>, String> {
    let run = AssertUnwindSafe(|| -> Result<Vec<f32>, String> {
        if let Some(fault) = &options.fault {
            for &i in members {
                fault(&active[i].request.prompt);
            }
        }
        let (tokens, shape) = prepare(cache);
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let device = cache.device();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), &device);
        let logits = engine
            .model()
            .forward(input, cache, engine.attention(), Logits::Last)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back_when_dropped() {
        let held = Arc::new(AtomicUsize::new(0));
        let mut taken: Vec<Place> = (0..4).map_while(|_| Place::take(&held, 4)).collect();
        assert_eq!(taken.len(), 4);
        assert!(
            Place::take(&held, 4).is_none(),
            "a fifth place past a bound of 4"
        );
        drop(taken.pop());
        let again = Place::take(&held, 4);
        assert!(again.is_some(), "a dropped place is given back");
        assert_eq!(held.load(Ordering::SeqCst), 4);
        drop(again);
        assert_eq!(held.load(Ordering::SeqCst), 3);
        let _free = Place::unbounded();
        assert_eq!(
            held.load(Ordering::SeqCst),
            3,
            "an unbounded place counts nothing"
        );
    }
}
