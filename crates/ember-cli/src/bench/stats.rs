//! Repetition statistics as llama-bench reports them: mean and sample standard deviation.

/// Arithmetic mean; 0 for no samples.
pub fn mean(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().sum::<f64>() / samples.len() as f64
}

/// Sample standard deviation (divides by n - 1, like llama-bench); 0 below two samples.
pub fn stddev(samples: &[f64]) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let m = mean(samples);
    let ss: f64 = samples.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (samples.len() - 1) as f64).sqrt()
}

/// Tokens per second of each sample: `tokens / seconds`.
pub fn rates(tokens: usize, samples_ns: &[u64]) -> Vec<f64> {
    samples_ns
        .iter()
        .map(|&ns| tokens as f64 * 1e9 / (ns.max(1)) as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_stddev() {
        // Worked by hand: mean 5, squared deviations 9+1+1+9 = 20, 20 / 3.
        let xs = [2.0, 4.0, 6.0, 8.0];
        assert_eq!(mean(&xs), 5.0);
        assert!((stddev(&xs) - (20.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(stddev(&[3.0]), 0.0);
        assert_eq!(mean(&[]), 0.0);
        assert_eq!(stddev(&[7.0, 7.0, 7.0]), 0.0);
    }

    #[test]
    fn rates_are_tokens_per_second() {
        assert_eq!(
            rates(512, &[1_000_000_000, 500_000_000]),
            vec![512.0, 1024.0]
        );
    }
}
