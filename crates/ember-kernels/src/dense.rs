//! Products with float weights (f32 or f16) kept as stored: a decoded token's projections,
//! which read every weight once, and a prefill's, which reuse each weight for many inputs.
//!
//! A [`DenseMatrix`] holds its `[out, in]` weight in panels of [`PANEL`] rows: panel `p`
//! holds, for each column `k`, rows `16p..16p + 16` side by side (`[panel][k][16]`), the
//! last panel padded with zero rows. One 512-bit load is then sixteen rows' weights for
//! one input value, multiplied by the value broadcast: the sums of a panel need no
//! horizontal reduction, and a panel is one sequential read. A decoded token streams the
//! panels once; a prefill computes two panels (32 rows) for six inputs at a time, twelve
//! accumulators in registers (the micro-kernel shape of BLIS-style GEMMs), each weight
//! load feeding six multiply-adds.
//!
//! Hand-written, not burn's matmul: burn-flex 0.21 hands products to the `gemm` crate,
//! whose AVX2 kernel (its AVX-512 one needs a nightly compiler) ran SmolLM2's f32 prefill
//! at 0.59x and its decode at 0.70x llama.cpp's speed on this project's VM, and which cannot
//! read f16 weights into an f32 product without a widened copy (docs/performance.md,
//! changes 34 and 35).

use half::f16;

use crate::{Isa, Pool, Shared};

/// Rows per panel (one 512-bit register of f32).
pub const PANEL: usize = 16;

/// Inputs a prefill tile computes at once (see the module docs).
const TILE_INPUTS: usize = 6;

/// Panels a prefill tile computes at once.
const TILE_PANELS: usize = 2;

/// A float weight's values, row-major `[out, in]`.
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

/// The panels' values.
#[derive(Debug, Clone)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// A float `[out, in]` weight in panels of [`PANEL`] rows (see the module docs).
#[derive(Debug, Clone)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    panels: Panels,
}

impl DenseMatrix {
    /// The `rows x cols` weight `values` (row-major) in panels, in its own type.
    ///
    /// # Panics
    /// When `values` does not hold `rows * cols` values.
    pub fn new(values: FloatRows<'_>, rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "a {rows}x{cols} weight");
        let padded = rows.div_ceil(PANEL) * PANEL * cols;
        let panels = match values {
            FloatRows::F32(v) => Panels::F32(pack(v, rows, cols, padded, 0.0)),
            FloatRows::F16(v) => Panels::F16(pack(v, rows, cols, padded, f16::ZERO)),
        };
        Self { rows, cols, panels }
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the values are f16.
    pub fn is_f16(&self) -> bool {
        matches!(self.panels, Panels::F16(_))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::F16(v) => v.len() * 2,
        }
    }

    /// Row `r` as f32 into `out` (`cols` values).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let (p, i) = (r / PANEL, r % PANEL);
        let base = p * PANEL * self.cols;
        match &self.panels {
            Panels::F32(v) => {
                for (k, o) in out.iter_mut().enumerate().take(self.cols) {
                    *o = v[base + k * PANEL + i];
                }
            }
            Panels::F16(v) => {
                for (k, o) in out.iter_mut().enumerate().take(self.cols) {
                    *o = v[base + k * PANEL + i].to_f32();
                }
            }
        }
    }

    /// These weights with `others` below them (q, k and v as one), or `None` when the
    /// columns or value types differ.
    pub fn stack(&self, others: &[&DenseMatrix]) -> Option<DenseMatrix> {
        if others
            .iter()
            .any(|o| o.cols != self.cols || o.is_f16() != self.is_f16())
        {
            return None;
        }
        let rows = self.rows + others.iter().map(|o| o.rows).sum::<usize>();
        let parts = std::iter::once(self).chain(others.iter().copied());
        Some(match &self.panels {
            Panels::F32(_) => {
                let mut values = vec![0f32; rows * self.cols];
                let mut at = 0;
                for part in parts {
                    for r in 0..part.rows {
                        part.row(
                            r,
                            &mut values[(at + r) * self.cols..(at + r + 1) * self.cols],
                        );
                    }
                    at += part.rows;
                }
                DenseMatrix::new(FloatRows::F32(&values), rows, self.cols)
            }
            Panels::F16(_) => {
                let mut values = vec![f16::ZERO; rows * self.cols];
                let mut at = 0;
                for part in parts {
                    let Panels::F16(v) = &part.panels else {
                        return None;
                    };
                    for r in 0..part.rows {
                        let base = r / PANEL * PANEL * part.cols + r % PANEL;
                        for k in 0..part.cols {
                            values[(at + r) * self.cols + k] = v[base + k * PANEL];
                        }
                    }
                    at += part.rows;
                }
                DenseMatrix::new(FloatRows::F16(&values), rows, self.cols)
            }
        })
    }

    /// `out[j * rows + r] = w[r] . x[j]` for the `n` inputs `x` (`n x cols`, row-major), on
    /// `isa` (the scalar loops where it is not [`Isa::Avx512`]), panels split over the
    /// kernels' pool. Sums run in f32, column by column (four partial sums for one input).
    ///
    /// # Panics
    /// When `x` holds fewer than `n * cols` values or `out` fewer than `n * rows`, or
    /// `isa` does not run on this CPU.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        assert!(
            x.len() >= n * self.cols && out.len() >= n * self.rows,
            "inputs or outputs too short"
        );
        assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
        if self.rows == 0 || n == 0 {
            return;
        }
        let panels = self.rows.div_ceil(PANEL);
        let pool = Pool::global();
        // Parts of whole tile panels, a few per thread.
        let per = panels
            .div_ceil(pool.threads() * 4)
            .max(1)
            .next_multiple_of(TILE_PANELS);
        let shared = Shared(out.as_mut_ptr());
        pool.run(panels.div_ceil(per), &|c| {
            let range = c * per..((c + 1) * per).min(panels);
            // SAFETY: parts write disjoint rows (panel ranges of one partition) inside
            // `n * rows` (asserted), and `isa` runs here.
            unsafe { self.panels_of(isa, x, n, range, &shared) };
        });
    }

    /// Panels `range` of [`DenseMatrix::matmul_with`].
    ///
    /// # Safety
    /// As `matmul_with`'s checks; no other thread writes these rows of `out`.
    unsafe fn panels_of(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        range: std::ops::Range<usize>,
        out: &Shared,
    ) {
        let mut p = range.start;
        while p < range.end {
            let count = (range.end - p).min(TILE_PANELS);
            let mut j = 0;
            while j < n {
                let inputs = (n - j).min(TILE_INPUTS);
                let mut sums = [[[0f32; PANEL]; TILE_PANELS]; TILE_INPUTS];
                self.tile(isa, x, p, count, j, inputs, &mut sums);
                for (b, panels) in sums.iter().enumerate().take(inputs) {
                    for (a, panel) in panels.iter().enumerate().take(count) {
                        let first = (p + a) * PANEL;
                        for (i, &v) in panel
                            .iter()
                            .enumerate()
                            .take(self.rows.saturating_sub(first))
                        {
                            out.write((j + b) * self.rows + first + i, v);
                        }
                    }
                }
                j += inputs;
            }
            p += count;
        }
    }

    /// Panels `p..p + count` (at most [`TILE_PANELS`]) times inputs `j..j + inputs` (at most
    /// [`TILE_INPUTS`]) into `sums[input][panel]`.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        isa: Isa,
        x: &[f32],
        p: usize,
        count: usize,
        j: usize,
        inputs: usize,
        sums: &mut [[[f32; PANEL]; TILE_PANELS]; TILE_INPUTS],
    ) {
        let cols = self.cols;
        let panel_len = PANEL * cols;
        let xs: [&[f32]; TILE_INPUTS] = std::array::from_fn(|b| {
            &x[(j + b.min(inputs - 1)) * cols..(j + b.min(inputs - 1) + 1) * cols]
        });
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 {
            macro_rules! run {
                ($p:literal, $c:literal) => {{
                    let xp: [*const f32; $c] = std::array::from_fn(|b| xs[b].as_ptr());
                    // SAFETY: AVX-512 runs here (`isa`, checked in `matmul_with`); each panel
                    // holds `PANEL * cols` values, each input `cols`.
                    let got: [[[f32; PANEL]; $p]; $c] = unsafe {
                        match &self.panels {
                            Panels::F32(v) => x86::tile_f32::<$p, $c>(
                                std::array::from_fn(|a| v.as_ptr().add((p + a) * panel_len)),
                                xp,
                                cols,
                            ),
                            Panels::F16(v) => x86::tile_f16::<$p, $c>(
                                std::array::from_fn(|a| v.as_ptr().add((p + a) * panel_len).cast()),
                                xp,
                                cols,
                            ),
                        }
                    };
                    for (b, panels) in got.iter().enumerate() {
                        sums[b][..$p].copy_from_slice(panels);
                    }
                }};
            }
            match (count, inputs) {
                (2, 6) => run!(2, 6),
                (2, 5) => run!(2, 5),
                (2, 4) => run!(2, 4),
                (2, 3) => run!(2, 3),
                (2, 2) => run!(2, 2),
                (2, _) => run!(2, 1),
                (_, 6) => run!(1, 6),
                (_, 5) => run!(1, 5),
                (_, 4) => run!(1, 4),
                (_, 3) => run!(1, 3),
                (_, 2) => run!(1, 2),
                _ => run!(1, 1),
            }
            return;
        }
        let _ = isa;
        for (a, panel_sums) in (0..count).map(|a| (a, (p + a) * panel_len)) {
            for (b, x) in xs.iter().enumerate().take(inputs) {
                let acc = &mut sums[b][a];
                for (k, &v) in x.iter().enumerate() {
                    let at = panel_sums + k * PANEL;
                    match &self.panels {
                        Panels::F32(w) => {
                            for (s, w) in acc.iter_mut().zip(&w[at..at + PANEL]) {
                                *s += w * v;
                            }
                        }
                        Panels::F16(w) => {
                            for (s, w) in acc.iter_mut().zip(&w[at..at + PANEL]) {
                                *s += w.to_f32() * v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `values` (`rows x cols`, row-major) as panels of `PANEL` rows, `padded` values in all.
fn pack<T: Copy>(values: &[T], rows: usize, cols: usize, padded: usize, zero: T) -> Vec<T> {
    let mut out = vec![zero; padded];
    for (r, row) in values.chunks_exact(cols.max(1)).enumerate().take(rows) {
        let base = r / PANEL * PANEL * cols + r % PANEL;
        for (k, &v) in row.iter().enumerate() {
            out[base + k * PANEL] = v;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The panel tiles on 512-bit registers: `P` panels times `C` inputs, one accumulator
    //! each (`P * C <= 12`); for one input, four accumulators per panel over interleaved
    //! columns (a decoded token: four loads in flight).

    use std::arch::x86_64::*;

    use super::PANEL;

    /// # Safety
    /// AVX-512 F; each `w[a]` points to a panel of `PANEL * cols` f32, each `x[b]` to
    /// `cols` f32.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    pub unsafe fn tile_f32<const P: usize, const C: usize>(
        w: [*const f32; P],
        x: [*const f32; C],
        cols: usize,
    ) -> [[[f32; PANEL]; P]; C] {
        tile::<P, C>(|a, k| _mm512_loadu_ps(w[a].add(k * PANEL)), x, cols)
    }

    /// # Safety
    /// AVX-512 F and F16C; each `w[a]` points to a panel of `PANEL * cols` f16, each `x[b]`
    /// to `cols` f32.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    pub unsafe fn tile_f16<const P: usize, const C: usize>(
        w: [*const u16; P],
        x: [*const f32; C],
        cols: usize,
    ) -> [[[f32; PANEL]; P]; C] {
        tile::<P, C>(
            |a, k| _mm512_cvtph_ps(_mm256_loadu_si256(w[a].add(k * PANEL).cast())),
            x,
            cols,
        )
    }

    #[inline(always)]
    unsafe fn tile<const P: usize, const C: usize>(
        load: impl Fn(usize, usize) -> __m512,
        x: [*const f32; C],
        cols: usize,
    ) -> [[[f32; PANEL]; P]; C] {
        let mut out = [[[0f32; PANEL]; P]; C];
        if C == 1 {
            // One input (a decoded token): each panel's sums in four chains over
            // interleaved columns, added at the end (two accumulators alone were bound by
            // the multiply-add's latency).
            for (a, sums) in out[0].iter_mut().enumerate() {
                let mut acc = [_mm512_setzero_ps(); 4];
                let whole = cols / 4 * 4;
                let mut k = 0;
                while k < whole {
                    for (i, s) in acc.iter_mut().enumerate() {
                        *s = _mm512_fmadd_ps(load(a, k + i), _mm512_set1_ps(*x[0].add(k + i)), *s);
                    }
                    k += 4;
                }
                while k < cols {
                    acc[0] = _mm512_fmadd_ps(load(a, k), _mm512_set1_ps(*x[0].add(k)), acc[0]);
                    k += 1;
                }
                let sum =
                    _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                _mm512_storeu_ps(sums.as_mut_ptr(), sum);
            }
            return out;
        }
        let mut acc = [[_mm512_setzero_ps(); P]; C];
        for k in 0..cols {
            let w: [__m512; P] = std::array::from_fn(|a| load(a, k));
            for b in 0..C {
                let v = _mm512_set1_ps(*x[b].add(k));
                for a in 0..P {
                    acc[b][a] = _mm512_fmadd_ps(w[a], v, acc[b][a]);
                }
            }
        }
        for b in 0..C {
            for a in 0..P {
                _mm512_storeu_ps(out[b][a].as_mut_ptr(), acc[b][a]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every ISA here, f32 and f16 weights, odd sizes (a last panel of 5, 1 or 2 rows, an
    /// odd number of panels, one column, inputs 1 to 13: every tile shape), the f64 product
    /// of the same values within f32 rounding; rows read back as stored; stacking.
    #[test]
    fn products_match_the_plain_sum_on_every_isa() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (rows, cols, n) in [
            (37, 576, 1),
            (17, 1, 3),
            (130, 83, 13),
            (5, 16, 4),
            (64, 1000, 2),
            (50, 64, 7),
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
                let m = DenseMatrix::new(weights, rows, cols);
                let mut row = vec![0f32; cols];
                for r in [0, rows / 2, rows - 1] {
                    m.row(r, &mut row);
                    assert_eq!(row, values[r * cols..(r + 1) * cols], "{name} row {r}");
                }
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; n * rows];
                    m.matmul_with(isa, &x, n, &mut out);
                    for j in 0..n {
                        for r in 0..rows {
                            let exact: f64 = (0..cols)
                                .map(|k| {
                                    f64::from(values[r * cols + k]) * f64::from(x[j * cols + k])
                                })
                                .sum();
                            let got = out[j * rows + r];
                            assert!(
                                (f64::from(got) - exact).abs() <= 2e-5 * (cols as f64).sqrt(),
                                "{name} {isa:?} {rows}x{cols} n={n} [{j},{r}]: {got} vs {exact}"
                            );
                        }
                    }
                }
                let stacked = m.stack(&[&m]).unwrap();
                assert_eq!(stacked.rows(), 2 * rows);
                for r in [0, rows - 1, rows, 2 * rows - 1] {
                    stacked.row(r, &mut row);
                    assert_eq!(
                        row,
                        values[(r % rows) * cols..(r % rows + 1) * cols],
                        "{name} stacked row {r}"
                    );
                }
            }
        }
    }
}
