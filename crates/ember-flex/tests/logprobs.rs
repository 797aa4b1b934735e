//! `GenerationConfig::logprobs`: each streamed token carries its log-probability and the
//! likeliest alternatives', computed from the model's raw logits. Checked against a
//! log-softmax of the logits the session's own forward pass returns for the same prompt
//! (an independent path: `Session::forward`, then f64 arithmetic here).

use ember::{BackendJob, CancelToken, Capabilities, Engine, GenerationConfig, RuntimeInfo};
use ember_tests::{smollm2_config, spec};

struct Job<'a>(&'a ember::EngineConfig);

impl BackendJob for Job<'_> {
    type Output = (Vec<f32>, Vec<ember::TokenEvent>);
    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> Self::Output {
        let engine = Engine::<B>::load(self.0, &device, runtime, &capabilities).unwrap();
        let ids = engine
            .tokenizer()
            .encode("The capital of France is", false)
            .unwrap();
        // The last position's logits of the prompt, by the plain forward pass.
        let all = engine.session().forward(&ids, true).unwrap();
        let vocab = all.len() / ids.len();
        let last = all[all.len() - vocab..].to_vec();
        let generation = GenerationConfig {
            max_new_tokens: 4,
            logprobs: Some(3),
            ..GenerationConfig::default()
        };
        let mut session = engine.session();
        let events = session
            .stream_tokens(&ids, &generation, CancelToken::new())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (last, events)
    }
}

#[test]
fn streamed_tokens_carry_the_models_log_probabilities() {
    let mut config = smollm2_config();
    config.backend = spec("flex", "cpu", ember::DType::F32);
    let (logits, events) = ember_flex::run(&config.backend, Job(&config)).unwrap();
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let norm = max
        + logits
            .iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));

    let first = &events[0];
    let lp = first.logprobs.as_ref().expect("asked for logprobs");
    // Greedy: the first token is the likeliest, its log-probability the log-softmax's.
    assert_eq!(first.id, Some(order[0] as u32));
    let want = f64::from(logits[order[0]]) - norm;
    assert!(
        (f64::from(lp.logprob) - want).abs() < 1e-4,
        "{} vs {want}",
        lp.logprob
    );
    assert_eq!(lp.top.len(), 3);
    for (k, &(id, p)) in lp.top.iter().enumerate() {
        assert_eq!(id, order[k] as u32, "alternative {k}");
        let want = f64::from(logits[order[k]]) - norm;
        assert!(
            (f64::from(p) - want).abs() < 1e-4,
            "alternative {k}: {p} vs {want}"
        );
    }
    for e in events.iter().filter(|e| e.id.is_some()) {
        let lp = e.logprobs.as_ref().expect("every sampled token has them");
        assert!(lp.logprob <= 0.0 && lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(Some(lp.top[0].0), e.id, "greedy picks the likeliest");
    }
}
