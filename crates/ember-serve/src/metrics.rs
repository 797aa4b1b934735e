//! The server's Prometheus metrics (`GET /metrics`), through the Prometheus project's Rust
//! client.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `ember_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route (`/v1/chat/completions`, ...).
    pub endpoint: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of `ember_sequences_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    /// `stop`, `length`, `cancelled` (the client went away), `error`, `timeout`, `shutdown`.
    pub reason: String,
}

/// Every metric, shared by the HTTP side and the schedulers.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Sequences the scheduler finished, by reason.
    pub finished: Family<FinishLabels, Counter>,
    /// Prompt tokens run.
    pub prompt_tokens: Counter,
    /// Prompt tokens not run: their keys and values were in a slot already.
    pub prompt_tokens_cached: Counter,
    /// Tokens generated.
    pub generated_tokens: Counter,
    /// Requests waiting for a slot.
    pub queue_depth: Gauge,
    /// Sequences in the running batch.
    pub active: Gauge,
    /// From a request's arrival to its first token.
    pub ttft: Histogram,
    /// Between two tokens of one sequence.
    pub per_token: Histogram,
    /// Sequences per forward step.
    pub batch_size: Histogram,
    /// Tokens per forward step (decode tokens plus prefill chunks).
    pub step_tokens: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("ember_requests", "HTTP requests answered", requests.clone());
        let finished = Family::<FinishLabels, Counter>::default();
        registry.register(
            "ember_sequences_finished",
            "Generations ended, by reason",
            finished.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "ember_prompt_tokens",
            "Prompt tokens run",
            prompt_tokens.clone(),
        );
        let prompt_tokens_cached = Counter::default();
        registry.register(
            "ember_prompt_tokens_cached",
            "Prompt tokens not run: a slot held their keys and values (a shared prefix)",
            prompt_tokens_cached.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "ember_generated_tokens",
            "Tokens generated",
            generated_tokens.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "ember_queue_depth",
            "Requests waiting for a slot",
            queue_depth.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "ember_active_sequences",
            "Sequences in the running batch",
            active.clone(),
        );
        let ttft = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "ember_time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            ttft.clone(),
        );
        let per_token = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "ember_time_per_output_token_seconds",
            "Between two generated tokens of one sequence",
            per_token.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "ember_batch_size",
            "Sequences per forward step",
            batch_size.clone(),
        );
        let step_tokens = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "ember_step_tokens",
            "Tokens per forward step (decoded tokens and prefill chunks)",
            step_tokens.clone(),
        );
        Self {
            registry,
            requests,
            finished,
            prompt_tokens,
            prompt_tokens_cached,
            generated_tokens,
            queue_depth,
            active,
            ttft,
            per_token,
            batch_size,
            step_tokens,
        }
    }

    /// Counts a request answered on `endpoint` with `status`.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                status,
            })
            .inc();
    }

    /// Counts a sequence that ended for `reason`.
    pub fn finish(&self, reason: &str) {
        self.finished
            .get_or_create(&FinishLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }
}
