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
        let mut ranked = Ranked::new(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l / self.temperature))
                .collect(),
        );
        if ranked.items.is_empty() {
            return 0;
        }
        if self.top_k > 0 {
            ranked.keep_top(self.top_k);
        }
        // Softmax over what is left; `prob` of a candidate, as a share of `total`.
        let max = ranked.get(0).1;
        let total: f64 = ranked
            .items
            .iter()
            .map(|&(_, l)| f64::from(l - max).exp())
            .sum();
        let prob = |l: f32| f64::from(l - max).exp() / total;
        let mut keep = ranked.items.len();
        if self.top_p < 1.0 {
            let mut cumulative = 0.0;
            keep = (0..keep)
                .position(|i| {
                    cumulative += prob(ranked.get(i).1);
                    cumulative >= f64::from(self.top_p)
                })
                .map_or(keep, |i| i + 1);
        }
        if self.min_p > 0.0 {
            // Probabilities fall along the ranking, so the candidates at or above the floor
            // are a prefix of it: counted without ranking them.
            let floor = prob(max) * f64::from(self.min_p);
            let above = if ranked.sorted >= keep {
                (0..keep)
                    .take_while(|&i| prob(ranked.items[i].1) >= floor)
                    .count()
            } else {
                ranked.items.iter().filter(|c| prob(c.1) >= floor).count()
            };
            keep = keep.min(above).max(1);
        }
        let kept_total: f64 = if keep == ranked.items.len() {
            ranked.items.iter().map(|c| prob(c.1)).sum()
        } else {
            (0..keep).map(|i| prob(ranked.get(i).1)).sum()
        };
        let mut r = self.rng.random::<f64>() * kept_total;
        for i in 0..keep {
            let (id, l) = ranked.get(i);
            r -= prob(l);
            if r <= 0.0 {
                return id;
            }
        }
        ranked.get(keep - 1).0
    }
}

/// Candidates `(token, scaled logit)`, ranked best first only as far as sampling looks:
/// `items[..sorted]` is in order and holds the best ones, the rest is in any order. Top-k,
/// top-p and the draw itself look at a few of the best tokens out of 49k-262k, so ranking
/// by partial selection (`select_nth_unstable`) instead of sorting the whole vocabulary
/// saves most of a token's sampling time (`benches/sampler.rs`). Ties go to the lower id.
struct Ranked {
    items: Vec<(u32, f32)>,
    sorted: usize,
}

impl Ranked {
    fn new(items: Vec<(u32, f32)>) -> Self {
        Self { items, sorted: 0 }
    }

    fn order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

    /// The `i`th best candidate (`i` below the length).
    fn get(&mut self, i: usize) -> (u32, f32) {
        if i >= self.sorted {
            // Ranking grows geometrically, so walking far costs O(n log n) at most.
            self.rank_to((i + 1).max(2 * self.sorted).max(64));
        }
        self.items[i]
    }

    /// Ranks the best `n` (at most all).
    fn rank_to(&mut self, n: usize) {
        let n = n.min(self.items.len());
        if n <= self.sorted {
            return;
        }
        let want = n - self.sorted;
        let rest = &mut self.items[self.sorted..];
        if want < rest.len() {
            rest.select_nth_unstable_by(want - 1, Self::order);
        }
        rest[..want].sort_unstable_by(Self::order);
        self.sorted = n;
    }

    /// Keeps the best `k`, ranked.
    fn keep_top(&mut self, k: usize) {
        self.rank_to(k);
        self.items.truncate(k);
    }
}

/// Index of the largest value (the first one on ties, as PyTorch's `argmax`); NaNs are
/// passed over (all NaN: the last index). The maximum first, in eight independent lanes
/// that vectorize, then its first position: a loop carrying the best index through a
/// branch was 5 % of a batched decode step over SmolLM2's 49,152 logits.
pub fn argmax(values: &[f32]) -> u32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(v);
        }
    }
    let max = lanes.iter().fold(tail, |m, &v| m.max(v));
    values
        .iter()
        .position(|&v| v == max)
        .unwrap_or(values.len().saturating_sub(1)) as u32
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

    /// `argmax` against the plain loop it replaced (the first maximum, NaNs passed over,
    /// all NaN: the last index) on lengths around its eight lanes, ties, infinities, NaNs.
    #[test]
    fn argmax_equals_the_plain_loop() {
        fn plain(values: &[f32]) -> u32 {
            let mut best = 0;
            for (i, &v) in values.iter().enumerate() {
                if v > values[best] || values[best].is_nan() {
                    best = i;
                }
            }
            best as u32
        }
        let mut rng = StdRng::seed_from_u64(5);
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 3.0];
        for len in [1usize, 7, 8, 9, 16, 23, 100, 1001] {
            for trial in 0..50 {
                let values: Vec<f32> = (0..len)
                    .map(|_| match rng.random_range(0..10) {
                        0 if trial % 2 == 0 => specials[rng.random_range(0..specials.len())],
                        1 => 3.0,
                        _ => rng.random_range(-4.0..4.0f32).round(),
                    })
                    .collect();
                assert_eq!(argmax(&values), plain(&values), "{values:?}");
            }
            let nans = vec![f32::NAN; len];
            assert_eq!(argmax(&nans), plain(&nans));
            let lows = vec![f32::NEG_INFINITY; len];
            assert_eq!(argmax(&lows), plain(&lows));
        }
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

    /// The sampler as it was before ranking by partial selection: the whole vocabulary
    /// sorted for every token (penalty and greedy paths unchanged, left out).
    fn sorted_sample(c: &GenerationConfig, rng: &mut StdRng, logits: &[f32]) -> u32 {
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l / c.temperature))
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if c.top_k > 0 {
            candidates.truncate(c.top_k);
        }
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
        if c.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    cumulative += p;
                    cumulative >= f64::from(c.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if c.min_p > 0.0 {
            let floor = probs[0] * f64::from(c.min_p);
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
    }

    /// `n` distinct logits in about [-8, 8], seeded.
    fn distinct_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        (0..n)
            .map(|_| {
                let u: f32 = rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>();
                let mut l = (u - 1.5) * 5.0;
                while !seen.insert(l.to_bits()) {
                    l = f32::from_bits(l.to_bits() + 1);
                }
                l
            })
            .collect()
    }

    #[test]
    fn partial_ranking_samples_what_a_full_sort_did() {
        let settings: [fn(&mut GenerationConfig); 6] = [
            |c| c.top_k = 40,
            |c| c.top_p = 0.9,
            |c| c.min_p = 0.05,
            |c| (c.top_k, c.top_p, c.min_p) = (50, 0.95, 0.02),
            |c| (c.top_p, c.min_p) = (0.5, 0.1),
            |_| {},
        ];
        for (n, f) in settings.iter().enumerate() {
            for temperature in [0.7, 1.0, 2.0] {
                let c = config(|c| {
                    c.temperature = temperature;
                    c.seed = n as u64;
                    f(c);
                });
                let mut sampler = Sampler::new(&c);
                let mut rng = StdRng::seed_from_u64(c.seed);
                let logits = distinct_logits(49_152, n as u64);
                for step in 0..60 {
                    // Another token on top each step, as in a real decode.
                    let mut step_logits = logits.clone();
                    step_logits.rotate_left(step * 997 % 49_152);
                    let want = sorted_sample(&c, &mut rng, &step_logits);
                    let got = sampler.sample(&mut step_logits, &[]);
                    assert_eq!(
                        got, want,
                        "setting {n}, temperature {temperature}, step {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn ranking_breaks_ties_by_id_and_ranks_only_what_is_asked() {
        let mut r = Ranked::new(vec![(0, 1.0), (1, 3.0), (2, 3.0), (3, -1.0), (4, 2.0)]);
        assert_eq!(r.get(0), (1, 3.0));
        assert_eq!(r.sorted, 5, "small sets are ranked whole");
        assert_eq!(r.get(1), (2, 3.0));
        let mut big = Ranked::new((0..10_000).map(|i| (i, (i % 977) as f32)).collect());
        assert_eq!(big.get(0), (976, 976.0));
        assert_eq!(big.sorted, 64);
        // Ten copies of each top value: the 101st is the first of 966.
        assert_eq!(big.get(100), (966, 966.0));
        assert_eq!(big.sorted, 128);
        big.keep_top(3);
        assert_eq!(big.items, vec![(976, 976.0), (1953, 976.0), (2930, 976.0)]);
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
