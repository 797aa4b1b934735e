//! The routes: OpenAI's `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and
//! `/v1/models`, and `/health`, `/metrics` and the chat page at `/`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use ember::{GenerationConfig, Message, Role};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{self, ApiError, Sampling};
use crate::scheduler::{Event, Place, Request};
use crate::{EmbedJob, Served, Shared, TextModel};

type AppState = State<Arc<Shared>>;

/// Every route, with the body limit (413 past it).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(shared.options.max_body_bytes))
        .with_state(shared)
}

/// Resolves on SIGINT or SIGTERM, or when the server is stopped from inside (a failed load).
pub async fn shutdown_signal(shared: &Shared) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("no SIGINT handler: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("no SIGTERM handler: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let stopped = async {
        while !shared.shutdown.load(Ordering::SeqCst) {
            shared.notify.notified().await;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
        _ = stopped => {}
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error answer, counted.
fn error(shared: &Shared, endpoint: &str, e: ApiError) -> Response {
    shared.metrics.request(endpoint, e.status);
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.body())).into_response()
}

/// A JSON answer with status 200, counted.
fn ok(shared: &Shared, endpoint: &str, body: Value) -> Response {
    shared.metrics.request(endpoint, 200);
    Json(body).into_response()
}

/// 401 unless the request carries the server's key (when it has one).
fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &shared.options.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(
            ApiError::new(401, "invalid_request_error", "Incorrect API key provided")
                .code("invalid_api_key"),
        ),
        None => Err(ApiError::new(
            401,
            "invalid_request_error",
            "Missing API key: send `Authorization: Bearer KEY`",
        )
        .code("invalid_api_key")),
    }
}

/// Compares without stopping at the first difference (the time taken says nothing about
/// how much of a guessed key was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body, or 413 / 400 as OpenAI's error.
fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status().as_u16();
        if status == 413 {
            ApiError::new(
                413,
                "invalid_request_error",
                format!("the request body is larger than the server's limit of {limit} bytes"),
            )
        } else {
            ApiError::new(status, "invalid_request_error", r.body_text())
        }
    })
}

/// The text model `id`, or 404 (unknown) / 400 (an encoder) / 503 (still loading).
fn text_model(shared: &Shared, id: &str) -> Result<(Arc<dyn TextModel>, Queue), ApiError> {
    match shared.model(id) {
        Some(Served::Text { model, queue, held }) => Ok((model, Queue { queue, held })),
        Some(Served::Embed { .. }) => Err(ApiError::bad_request(format!(
            "model `{id}` is an encoder: it serves /v1/embeddings only"
        ))
        .param("model")),
        None => Err(unknown_model(shared, id)),
    }
}

fn unknown_model(shared: &Shared, id: &str) -> ApiError {
    let models = shared.models.read().unwrap_or_else(|e| e.into_inner());
    if models.len() < shared.expected && !shared.shutdown.load(Ordering::SeqCst) {
        return ApiError::new(
            503,
            "server_error",
            "the models are still loading: see /health",
        );
    }
    let known: Vec<&str> = models.iter().map(|(m, _)| m.as_str()).collect();
    ApiError::new(
        404,
        "invalid_request_error",
        format!(
            "The model `{id}` does not exist (served: {})",
            known.join(", ")
        ),
    )
    .param("model")
    .code("model_not_found")
}

/// A decoder's scheduler queue and its places taken.
struct Queue {
    queue: std::sync::mpsc::SyncSender<Request>,
    held: Arc<AtomicUsize>,
}

/// Checks `sampling`, fits `max_tokens` to the context and queues the request: its events,
/// or 400 (bad values, a prompt that does not fit), 429 (every place taken: `--parallel`
/// running and `--queue` waiting), 503 (shutting down).
fn submit(
    shared: &Shared,
    model: &dyn TextModel,
    queue: &Queue,
    prompt: Vec<u32>,
    sampling: &Sampling,
    default_max_tokens: usize,
    received: Instant,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    if shared.shutdown.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            503,
            "server_error",
            "the server is shutting down",
        ));
    }
    if sampling.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n = 1 is supported").param("n"));
    }
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty").param("prompt"));
    }
    let context = model.context_length();
    if prompt.len() >= context {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {context} tokens, but the prompt has {} \
             tokens (at least one position must be left to generate)",
            prompt.len()
        ))
        .param("messages")
        .code("context_length_exceeded"));
    }
    let requested = sampling.max_completion_tokens.or(sampling.max_tokens);
    if requested == Some(0) {
        return Err(ApiError::bad_request("max_tokens must be at least 1").param("max_tokens"));
    }
    let room = context - prompt.len();
    let max_new_tokens = requested
        .map_or(default_max_tokens, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        })
        .min(shared.options.max_tokens.max(1))
        .min(room);
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(format!(
            "temperature must be in [0, 2], got {temperature}"
        ))
        .param("temperature"));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(
            ApiError::bad_request(format!("top_p must be in (0, 1], got {top_p}")).param("top_p"),
        );
    }
    let stop = sampling
        .stop
        .clone()
        .map(api::Stop::into_vec)
        .unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("stop takes at most 4 non-empty strings").param("stop"));
    }
    let seed = sampling.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let logprobs = logprobs_asked(sampling)?;
    let generation = GenerationConfig {
        max_new_tokens,
        temperature,
        top_p,
        seed,
        stop,
        logprobs,
        ..GenerationConfig::default()
    };
    let busy = || {
        ApiError::new(
            429,
            "rate_limit_error",
            format!(
                "the server is busy: all {} places are taken ({} running, --parallel, and {} \
                 waiting, --queue); retry later",
                shared.places(),
                shared.options.scheduler.parallel.max(1),
                shared.options.queue.max(1)
            ),
        )
        .code("rate_limit_exceeded")
    };
    let place = Place::take(&queue.held, shared.places()).ok_or_else(busy)?;
    let (tx, rx) = unbounded_channel();
    let request = Request {
        prompt,
        generation,
        events: tx,
        received,
        deadline: shared.options.request_timeout.map(|t| received + t),
        place,
    };
    shared.metrics.queue_depth.inc();
    match queue.queue.try_send(request) {
        Ok(()) => Ok(rx),
        Err(e) => {
            shared.metrics.queue_depth.dec();
            Err(match e {
                std::sync::mpsc::TrySendError::Full(_) => busy(),
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    ApiError::new(503, "server_error", "the model has stopped")
                }
            })
        }
    }
}

/// The alternatives per token a request asks for (`None`: no log-probabilities), or 400.
fn logprobs_asked(sampling: &Sampling) -> Result<Option<usize>, ApiError> {
    let top = match (sampling.logprobs, sampling.top_logprobs) {
        (None | Some(api::LogprobsParam::Flag(false)), None) => return Ok(None),
        (None | Some(api::LogprobsParam::Flag(false)), Some(_)) => {
            return Err(
                ApiError::bad_request("top_logprobs needs logprobs to be true")
                    .param("top_logprobs"),
            )
        }
        (Some(api::LogprobsParam::Flag(true)), top) => top.unwrap_or(0),
        (Some(api::LogprobsParam::Count(n)), _) => n,
    };
    let max = ember::config::MAX_TOP_LOGPROBS;
    if top > max as u64 {
        return Err(ApiError::bad_request(format!(
            "at most {max} alternative tokens per position, asked for {top}"
        ))
        .param("top_logprobs"));
    }
    Ok(Some(top as usize))
}

/// Chat or text completion: what differs between the two answers' shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Text => "/v1/completions",
        }
    }
}

/// What the answer's chunks or body carry besides the generated text.
struct Answer {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// The request asked for log-probabilities.
    logprobs: bool,
}

impl Answer {
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        self.chunk_with(text, role, finish, None)
    }

    /// A chunk, with a token's log-probabilities (`offset`: where its text starts in the
    /// answer, for text completions).
    fn chunk_with(
        &self,
        text: Option<&str>,
        role: bool,
        finish: Option<&str>,
        logprobs: Option<(&api::TokenLogprobs, usize)>,
    ) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                let logprobs =
                    logprobs.map(|(lp, _)| json!({"content": [lp.chat()], "refusal": null}));
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Text => {
                let logprobs = logprobs.map(|(lp, offset)| {
                    api::TokenLogprobs::legacy(std::slice::from_ref(lp), &[offset])
                });
                json!({
                    "index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish
                })
            }
        };
        let mut chunk = json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion.chunk", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn usage_chunk(&self, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion.chunk", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        })
    }

    /// The whole answer; `logprobs`: each token's with where its text starts, when asked.
    fn whole(
        &self,
        text: String,
        finish: &str,
        usage: Value,
        logprobs: Option<&[(api::TokenLogprobs, usize)]>,
    ) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": logprobs.map(|l| json!({
                    "content": l.iter().map(|(t, _)| t.chat()).collect::<Vec<_>>(),
                    "refusal": null,
                })),
                "finish_reason": finish,
            }),
            Kind::Text => json!({
                "index": 0, "text": text, "finish_reason": finish,
                "logprobs": logprobs.map(|l| {
                    let (tokens, offsets): (Vec<_>, Vec<_>) = l.iter().cloned().unzip();
                    api::TokenLogprobs::legacy(&tokens, &offsets)
                }),
            }),
        };
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": usage,
        })
    }
}

/// Waits for the whole answer.
async fn respond_whole(
    shared: &Shared,
    answer: Answer,
    mut rx: UnboundedReceiver<Event>,
) -> Response {
    let endpoint = answer.kind.endpoint();
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token {
                text: t,
                logprobs: lp,
                ..
            } => {
                if let Some(lp) = lp {
                    logprobs.push((lp, text.len()));
                }
                text.push_str(&t);
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let usage = api::usage(prompt_tokens, completion_tokens);
                return ok(
                    shared,
                    endpoint,
                    answer.whole(
                        text,
                        api::finish_reason(finish),
                        usage,
                        answer.logprobs.then_some(logprobs.as_slice()),
                    ),
                );
            }
            Event::Error { status, message } => {
                return error(
                    shared,
                    endpoint,
                    ApiError::new(status, "server_error", message),
                )
            }
        }
    }
    error(
        shared,
        endpoint,
        ApiError::new(503, "server_error", "the model stopped before answering"),
    )
}

/// Streams the answer as server-sent events, OpenAI's way: a first chunk with the role
/// (chat), one per piece of text, one with the finish reason, one with the usage when
/// asked, then `[DONE]`. A client that goes away closes the request's channel, which
/// drops its sequence at the scheduler's next step.
fn respond_stream(shared: &Shared, answer: Answer, mut rx: UnboundedReceiver<Event>) -> Response {
    shared.metrics.request(answer.kind.endpoint(), 200);
    let (tx, out) = unbounded_channel::<Result<SseEvent, Infallible>>();
    let data = |v: &Value| Ok(SseEvent::default().data(v.to_string()));
    tokio::spawn(async move {
        if answer.kind == Kind::Chat && tx.send(data(&answer.chunk(Some(""), true, None))).is_err()
        {
            return;
        }
        // Bytes of text sent so far (a text completion's `text_offset`).
        let mut sent = 0;
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = tx.closed() => return,
            };
            let Some(event) = event else {
                let e = ApiError::new(503, "server_error", "the model stopped before answering");
                let _ = tx.send(data(&e.body()));
                return;
            };
            match event {
                Event::Token { text, logprobs, .. } => {
                    let lp = logprobs.as_ref().map(|lp| (lp, sent));
                    sent += text.len();
                    if (!text.is_empty() || lp.is_some())
                        && tx
                            .send(data(&answer.chunk_with(Some(&text), false, None, lp)))
                            .is_err()
                    {
                        return;
                    }
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let reason = api::finish_reason(finish);
                    let none = match answer.kind {
                        Kind::Chat => None,
                        Kind::Text => Some(""),
                    };
                    let _ = tx.send(data(&answer.chunk(none, false, Some(reason))));
                    if answer.include_usage {
                        let usage = api::usage(prompt_tokens, completion_tokens);
                        let _ = tx.send(data(&answer.usage_chunk(usage)));
                    }
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
                    return;
                }
                Event::Error { status, message } => {
                    let e = ApiError::new(status, "server_error", message);
                    let _ = tx.send(data(&e.body()));
                    return;
                }
            }
        }
    });
    Sse::new(UnboundedReceiverStream::new(out)).into_response()
}

fn answer(shared: &Shared, kind: Kind, model: &str, sampling: &Sampling) -> Answer {
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    Answer {
        kind,
        id: format!("{prefix}-{n:016x}"),
        model: model.to_string(),
        created: now_secs(),
        include_usage: sampling.stream
            && sampling
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        logprobs: logprobs_asked(sampling).ok().flatten().is_some(),
    }
}

async fn chat(
    State(shared): AppState,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let endpoint = Kind::Chat.endpoint();
    let prepared = (|| {
        check_key(&shared, &headers)?;
        let raw = body(raw, shared.options.max_body_bytes)?;
        let request: api::ChatRequest = api::parse(&raw)?;
        let (model, queue) = text_model(&shared, &request.model)?;
        if request.messages.is_empty() {
            return Err(ApiError::bad_request("messages is empty").param("messages"));
        }
        let mut messages = Vec::with_capacity(request.messages.len());
        for m in &request.messages {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported message role `{other}` (supported: system, developer, user, assistant)"
                    ))
                    .param("messages"))
                }
            };
            let content = match &m.content {
                Some(api::Content::Text(t)) => t.clone(),
                Some(api::Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::bad_request(format!(
                                    "unsupported content part `{kind}` (only text)"
                                ))
                                .param("messages"))
                            }
                        }
                    }
                    text
                }
                None => {
                    return Err(ApiError::bad_request("a message has no content").param("messages"))
                }
            };
            messages.push(Message { role, content });
        }
        let tokenizer = model.tokenizer();
        let text = tokenizer
            .apply_chat_template(&messages)
            .map_err(|e| ApiError::bad_request(e.to_string()).param("messages"))?;
        let prompt = tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::bad_request(e.to_string()).param("messages"))?;
        let default = shared.options.default_max_tokens;
        let rx = submit(
            &shared,
            model.as_ref(),
            &queue,
            prompt,
            &request.sampling,
            default,
            received,
        )?;
        Ok((
            answer(&shared, Kind::Chat, &request.model, &request.sampling),
            request.sampling.stream,
            rx,
        ))
    })();
    match prepared {
        Err(e) => error(&shared, endpoint, e),
        Ok((answer, true, rx)) => respond_stream(&shared, answer, rx),
        Ok((answer, false, rx)) => respond_whole(&shared, answer, rx).await,
    }
}

async fn completions(
    State(shared): AppState,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let endpoint = Kind::Text.endpoint();
    let prepared = (|| {
        check_key(&shared, &headers)?;
        let raw = body(raw, shared.options.max_body_bytes)?;
        let request: api::CompletionRequest = api::parse(&raw)?;
        let (model, queue) = text_model(&shared, &request.model)?;
        let prompt = match &request.prompt {
            api::Prompt::One(p) => p.clone(),
            api::Prompt::Many(list) if list.len() == 1 => list[0].clone(),
            api::Prompt::Many(_) => {
                return Err(
                    ApiError::bad_request("only one prompt per request is supported")
                        .param("prompt"),
                )
            }
        };
        let prompt = model
            .tokenizer()
            .encode(&prompt, true)
            .map_err(|e| ApiError::bad_request(e.to_string()).param("prompt"))?;
        // OpenAI's default for text completions.
        let rx = submit(
            &shared,
            model.as_ref(),
            &queue,
            prompt,
            &request.sampling,
            16,
            received,
        )?;
        Ok((
            answer(&shared, Kind::Text, &request.model, &request.sampling),
            request.sampling.stream,
            rx,
        ))
    })();
    match prepared {
        Err(e) => error(&shared, endpoint, e),
        Ok((answer, true, rx)) => respond_stream(&shared, answer, rx),
        Ok((answer, false, rx)) => respond_whole(&shared, answer, rx).await,
    }
}

async fn embeddings(
    State(shared): AppState,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let endpoint = "/v1/embeddings";
    let prepared = (|| {
        check_key(&shared, &headers)?;
        let raw = body(raw, shared.options.max_body_bytes)?;
        let request: api::EmbeddingRequest = api::parse(&raw)?;
        let queue = match shared.model(&request.model) {
            Some(Served::Embed { queue, held, .. }) => (queue, held),
            Some(Served::Text { .. }) => {
                return Err(ApiError::bad_request(format!(
                    "model `{}` is a decoder: it does not serve embeddings",
                    request.model
                ))
                .param("model"))
            }
            None => return Err(unknown_model(&shared, &request.model)),
        };
        let base64 = match request.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "encoding_format `{other}` is not supported (float, base64)"
                ))
                .param("encoding_format"))
            }
        };
        let texts = match request.input {
            api::Input::One(t) => vec![t],
            api::Input::Many(v) => v,
        };
        if texts.is_empty() || texts.len() > 2048 || texts.iter().any(String::is_empty) {
            return Err(
                ApiError::bad_request("input must be 1 to 2048 non-empty strings").param("input"),
            );
        }
        let (queue, held) = queue;
        let busy = || {
            ApiError::new(
                429,
                "rate_limit_error",
                format!(
                    "the server is busy: all {} places are taken (1 computed and {} waiting, \
                     --queue); retry later",
                    shared.embed_places(),
                    shared.options.queue.max(1)
                ),
            )
            .code("rate_limit_exceeded")
        };
        let place = Place::take(&held, shared.embed_places()).ok_or_else(busy)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        queue
            .try_send(EmbedJob {
                texts,
                reply: tx,
                place,
            })
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => busy(),
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    ApiError::new(503, "server_error", "the model has stopped")
                }
            })?;
        Ok((request.model, base64, rx))
    })();
    let (model, base64, rx) = match prepared {
        Ok(p) => p,
        Err(e) => return error(&shared, endpoint, e),
    };
    match rx.await {
        Ok(Ok((vectors, tokens))) => {
            let data: Vec<Value> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let embedding = if base64 {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": i, "embedding": embedding})
                })
                .collect();
            ok(
                &shared,
                endpoint,
                json!({
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }),
            )
        }
        Ok(Err(message)) => error(
            &shared,
            endpoint,
            ApiError::new(500, "server_error", message),
        ),
        Err(_) => error(
            &shared,
            endpoint,
            ApiError::new(503, "server_error", "the model stopped before answering"),
        ),
    }
}

async fn models(State(shared): AppState, headers: HeaderMap) -> Response {
    let endpoint = "/v1/models";
    if let Err(e) = check_key(&shared, &headers) {
        return error(&shared, endpoint, e);
    }
    let data: Vec<Value> = shared
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, _)| json!({"id": id, "object": "model", "created": 0, "owned_by": "ember"}))
        .collect();
    ok(&shared, endpoint, json!({"object": "list", "data": data}))
}

async fn health(State(shared): AppState) -> Response {
    let loaded = shared
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let (status, state) = if shared.shutdown.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if loaded < shared.expected {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        status,
        Json(json!({"status": state, "models_loaded": loaded, "models": shared.expected})),
    )
        .into_response()
}

async fn metrics(State(shared): AppState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn not_found(State(shared): AppState, uri: axum::http::Uri) -> Response {
    error(
        &shared,
        "other",
        ApiError::new(404, "invalid_request_error", format!("no route {uri}")),
    )
}
