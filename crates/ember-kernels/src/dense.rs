//! Products with float weights (f32 or f16, row-major `[out, in]`) for a few inputs: a
//! decoded token's projections, which read every weight once and do one multiply-add per
//! weight, so they run at the speed the weights stream from memory.
//!
//! Hand-written, not burn's matmul: burn-flex 0.21 hands a `[1, in] x [in, out]` product to
//! the `gemm` crate, which on this project's VM ran a decoded SmolLM2 token in f32 at 0.77x
//! llama.cpp's speed (its AVX2 kernel, threads on rayon; docs/performance.md, change 34), and
//! it cannot read f16 weights into an f32 product without a converted copy. Here each
//! weight row is read once, contiguously, for every input at a time, on the kernels' pool,
//! f16 widened in registers (F16C).

use half::f16;

use crate::{Isa, Pool, Shared};

/// A float weight's values, row-major.
#[derive(Debug, Clone, Copy)]
pub enum FloatRows<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values (widened to f32 before each multiply-add).
    F16(&'a [f16]),
}

impl FloatRows<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            FloatRows::F32(v) => v.len(),
            FloatRows::F16(v) => v.len(),
        }
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of each part of the pool's work: whole tiles, a few per thread.
const TILE_ROWS: usize = 4;

/// `out[j * rows + r] = w[r] . x[j]` for the `rows x cols` weight `w` and the `n` inputs
/// `x` (`n x cols`, row-major), on `isa` (the scalar loop where it is [`Isa::Scalar`]),
/// rows split over the kernels' pool. Sums run in f32 (lane-wise partial sums added at the
/// end: not the order of a plain loop, so results differ from it by f32 rounding).
///
/// # Panics
/// When `w` does not hold `rows * cols` values, `x` holds fewer than `n * cols` or `out`
/// fewer than `n * rows`, or `isa` does not run on this CPU.
pub fn matmul(
    isa: Isa,
    w: FloatRows<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    assert_eq!(
        w.len(),
        rows * cols,
        "a {rows}x{cols} weight holds {} values",
        w.len()
    );
    assert!(
        x.len() >= n * cols && out.len() >= n * rows,
        "inputs or outputs too short"
    );
    assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
    if rows == 0 || n == 0 {
        return;
    }
    let pool = Pool::global();
    let chunk = rows
        .div_ceil(pool.threads() * 8)
        .max(16)
        .next_multiple_of(TILE_ROWS);
    let shared = Shared(out.as_mut_ptr());
    pool.run(rows.div_ceil(chunk), &|c| {
        let range = c * chunk..((c + 1) * chunk).min(rows);
        // SAFETY: parts write disjoint rows of `out` (row ranges of one partition), inside
        // `n * rows`; the lengths were asserted above and `isa` runs here.
        unsafe { rows_of(isa, w, [rows, cols], x, n, range, &shared) };
    });
}

/// Rows `range` of [`matmul`], `TILE_ROWS` rows and up to four inputs at a time.
///
/// # Safety
/// As [`matmul`]'s checks; no other thread writes these rows of `out`.
unsafe fn rows_of(
    isa: Isa,
    w: FloatRows<'_>,
    [rows_total, cols]: [usize; 2],
    x: &[f32],
    n: usize,
    range: std::ops::Range<usize>,
    out: &Shared,
) {
    let mut r = range.start;
    while r < range.end {
        let tile = (range.end - r).min(TILE_ROWS);
        let mut j = 0;
        while j < n {
            let inputs = (n - j).min(4);
            let mut values = [[0f32; 4]; TILE_ROWS];
            for (a, row) in values.iter_mut().enumerate().take(tile) {
                for (b, v) in row.iter_mut().enumerate().take(inputs) {
                    let xs = &x[(j + b) * cols..(j + b + 1) * cols];
                    *v = dot(isa, w, (r + a) * cols, cols, xs);
                }
            }
            for (a, row) in values.iter().enumerate().take(tile) {
                for (b, &v) in row.iter().enumerate().take(inputs) {
                    out.write((j + b) * rows_total + r + a, v);
                }
            }
            j += inputs;
        }
        r += tile;
    }
}

/// Row `w[start..start + cols]` dotted with `x`.
#[inline(always)]
unsafe fn dot(isa: Isa, w: FloatRows<'_>, start: usize, cols: usize, x: &[f32]) -> f32 {
    match (isa, w) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, FloatRows::F32(v)) => {
            x86::dot_f32_512(v.as_ptr().add(start), x.as_ptr(), cols)
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, FloatRows::F16(v)) => {
            x86::dot_f16_512(v.as_ptr().add(start).cast(), x.as_ptr(), cols)
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512Vnni, FloatRows::F32(v)) => {
            x86::dot_f32_256(v.as_ptr().add(start), x.as_ptr(), cols)
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512Vnni, FloatRows::F16(v)) => {
            x86::dot_f16_256(v.as_ptr().add(start).cast(), x.as_ptr(), cols)
        }
        (_, FloatRows::F32(v)) => v[start..start + cols]
            .iter()
            .zip(x)
            .map(|(a, b)| a * b)
            .sum(),
        (_, FloatRows::F16(v)) => v[start..start + cols]
            .iter()
            .zip(x)
            .map(|(a, b)| a.to_f32() * b)
            .sum(),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The dot products on 512-bit (AVX-512 F) and 256-bit (AVX2, FMA, F16C) registers:
    //! four accumulators (four loads in flight), the tail masked or scalar.

    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512 F and F16C; `w` and `x` point to `cols` values.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    pub unsafe fn dot_f32_512(w: *const f32, x: *const f32, cols: usize) -> f32 {
        dot_512(
            cols,
            |k| _mm512_loadu_ps(w.add(k)),
            |k, m| _mm512_maskz_loadu_ps(m, w.add(k)),
            x,
        )
    }

    /// # Safety
    /// AVX-512 F and F16C; `w` points to `cols` f16 values and `x` to `cols` f32.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f16_512(w: *const u16, x: *const f32, cols: usize) -> f32 {
        dot_512(
            cols,
            |k| _mm512_cvtph_ps(_mm256_loadu_si256(w.add(k).cast())),
            |k, m| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.add(k).cast())),
            x,
        )
    }

    #[inline(always)]
    unsafe fn dot_512(
        cols: usize,
        load: impl Fn(usize) -> __m512,
        load_masked: impl Fn(usize, __mmask16) -> __m512,
        x: *const f32,
    ) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let whole = cols / 64 * 64;
        let mut k = 0;
        while k < whole {
            for (i, a) in acc.iter_mut().enumerate() {
                let at = k + 16 * i;
                *a = _mm512_fmadd_ps(load(at), _mm512_loadu_ps(x.add(at)), *a);
            }
            k += 64;
        }
        while k < cols {
            let len = (cols - k).min(16);
            let m = ((1u32 << len) - 1) as __mmask16;
            acc[0] = _mm512_fmadd_ps(
                load_masked(k, m),
                _mm512_maskz_loadu_ps(m, x.add(k)),
                acc[0],
            );
            k += 16;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum)
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` and `x` point to `cols` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32_256(w: *const f32, x: *const f32, cols: usize) -> f32 {
        dot_256(cols, |k| _mm256_loadu_ps(w.add(k)), |k| *w.add(k), x)
    }

    /// # Safety
    /// AVX2, FMA and F16C; `w` points to `cols` f16 values and `x` to `cols` f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_256(w: *const u16, x: *const f32, cols: usize) -> f32 {
        dot_256(
            cols,
            |k| _mm256_cvtph_ps(_mm_loadu_si128(w.add(k).cast())),
            |k| half::f16::from_bits(*w.add(k)).to_f32(),
            x,
        )
    }

    #[inline(always)]
    unsafe fn dot_256(
        cols: usize,
        load: impl Fn(usize) -> __m256,
        one: impl Fn(usize) -> f32,
        x: *const f32,
    ) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let whole = cols / 32 * 32;
        let mut k = 0;
        while k < whole {
            for (i, a) in acc.iter_mut().enumerate() {
                let at = k + 8 * i;
                *a = _mm256_fmadd_ps(load(at), _mm256_loadu_ps(x.add(at)), *a);
            }
            k += 32;
        }
        while k + 8 <= cols {
            acc[0] = _mm256_fmadd_ps(load(k), _mm256_loadu_ps(x.add(k)), acc[0]);
            k += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut total = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        while k < cols {
            total += one(k) * *x.add(k);
            k += 1;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every ISA here, f32 and f16 weights, odd sizes (tails of every width, a row count
    /// that is not whole tiles, one to six inputs): the f64 product of the same values
    /// within f32 rounding.
    #[test]
    fn products_match_the_plain_sum_on_every_isa() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (rows, cols, n) in [
            (37, 576, 1),
            (9, 1, 3),
            (130, 83, 6),
            (5, 16, 4),
            (64, 1000, 2),
        ] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
            for (name, weights, values) in [
                ("f32", FloatRows::F32(&w), w.clone()),
                (
                    "f16",
                    FloatRows::F16(&w16),
                    w16.iter().map(|v| v.to_f32()).collect(),
                ),
            ] {
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; n * rows];
                    matmul(isa, weights, rows, cols, &x, n, &mut out);
                    for j in 0..n {
                        for r in 0..rows {
                            let exact: f64 = (0..cols)
                                .map(|k| {
                                    f64::from(values[r * cols + k]) * f64::from(x[j * cols + k])
                                })
                                .sum();
                            let got = out[j * rows + r];
                            assert!(
                                (f64::from(got) - exact).abs() <= 1e-5 * (cols as f64).sqrt() * 2.0,
                                "{name} {isa:?} {rows}x{cols} n={n} [{j},{r}]: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_weight_of_the_wrong_size_is_refused() {
        let w = vec![0f32; 10];
        let result = std::panic::catch_unwind(|| {
            let mut out = vec![0f32; 3];
            matmul(
                Isa::Scalar,
                FloatRows::F32(&w),
                3,
                4,
                &[0.0; 4],
                1,
                &mut out,
            );
        });
        assert!(result.is_err());
    }
}
