//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, seeded.
//!
//! The order of the filters follows Hugging Face's `generate` (penalty, temperature, top-k,
//! top-p), with min-p applied last, as in llama.cpp's default chain.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::GenerationConfig;

/// Picks the next token from logits; reproducible for a given seed.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    rng: StdRng,
}

impl Sampler {
    /// A sampler with `config`'s parameters and seed.
    pub fn new(config: &GenerationConfig) -> Self {
        Self {
            temperature: config.temperature,
            top_k: config.top_k,
            top_p: config.top_p,
            min_p: config.min_p,
            repetition_penalty: config.repetition_penalty,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Whether this sampler always takes the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Chooses a token given the logits of the next position and the tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        if self.repetition_penalty != 1.0 {
            let mut seen = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / self.repetition_penalty
                    } else {
                        *l * self.repetition_penalty
                    };
                }
            }
        }
        if self.is_greedy() {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l / self.temperature))
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.top_k > 0 {
            candidates.truncate(self.top_k);
        }
        // Softmax over what is left (sorted, so the first is the maximum).
        let max = candidates[0].1;
        let mut total = 0.0f64;
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| {
                let p = f64::from(l - max).exp();
                total += p;
                p
            })
            .collect();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    cumulative += p;
                    cumulative >= f64::from(self.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if self.min_p > 0.0 {
            let floor = probs[0] * f64::from(self.min_p);
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
    }
}

/// Index of the largest value (the first one on ties, as PyTorch's `argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut GenerationConfig)) -> GenerationConfig {
        let mut c = GenerationConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&GenerationConfig::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(&config(|c| c.repetition_penalty = 2.0));
        // Token 0 (4.0 -> 2.0) falls below token 1 (3.0).
        assert_eq!(s.sample(&mut [4.0, 3.0, -1.0], &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(&config(|c| {
            c.temperature = 1.0;
            c.top_k = 1;
        }));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.9, 0.5], &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [5.0f32, 4.9, -10.0, -10.0];
        for f in [
            (|c: &mut GenerationConfig| c.top_p = 0.9) as fn(&mut GenerationConfig),
            |c: &mut GenerationConfig| c.min_p = 0.01,
        ] {
            let mut s = Sampler::new(&config(|c| {
                c.temperature = 1.0;
                f(c);
            }));
            for _ in 0..200 {
                assert!(s.sample(&mut logits.clone(), &[]) < 2);
            }
        }
    }

    #[test]
    fn same_seed_same_tokens_and_sampling_follows_probabilities() {
        let run = |seed| {
            let mut s = Sampler::new(&config(|c| {
                c.temperature = 1.0;
                c.seed = seed;
            }));
            (0..2000)
                .map(|_| s.sample(&mut [0.0, (3.0f32).ln()], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // p(token 1) = 3/4.
        let ones = run(7).iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        assert!((ones - 0.75).abs() < 0.04, "{ones}");
    }
}
