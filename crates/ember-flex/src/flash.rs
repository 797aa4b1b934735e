//! Prefill attention on host memory, f32, in the manner of FlashAttention (Dao et al., 2022,
//! <https://arxiv.org/abs/2205.14135>): per block of query rows, the keys in blocks, a
//! running maximum and sum per row (online softmax), the output accumulated in f32; no
//! `[queries, keys]` score matrix. A causal prefill computes only the keys each query sees
//! (`0..=i`), where burn-flex 0.21's attention computes and stores the whole square
//! (docs/performance.md, change 25).
//!
//! Hand-written because it is the hot path of a prefill (a quarter of it with burn's op). The
//! two products are small register-blocked matrix products: [`ROWS`] query rows share each
//! loaded key (packed [`PANEL`] keys wide, transposed, once per head) and each loaded value
//! row. The code is plain Rust compiled twice, for baseline x86-64 (and every other CPU) and
//! with AVX2+FMA where the CPU has them (runtime detection), whose vectorizer turns the
//! fixed-width loops into 8-wide fused multiply-adds. The kernels' pool runs (batch row, tile
//! of query rows) parts, every head in each, the tiles with the most keys first.

use ember_kernels::{Isa, Pool};
use std::sync::Mutex;

/// Query rows that share each loaded key and value row.
const ROWS: usize = 6;
/// Keys per packed panel of K (two 8-wide vectors).
const PANEL: usize = 16;
/// Keys per online-softmax step (a multiple of [`PANEL`]).
const BLOCK: usize = 64;
/// Output columns accumulated at a time.
const CHUNK: usize = 16;
/// Query rows per part of the pool at most (a multiple of [`ROWS`]).
const TILE: usize = 4 * ROWS;

/// A 4-d f32 operand read in place: element `[a, b, c, d]` at `offset + a * strides[0] + ..`
/// of `values` (a stride is 0 along a broadcast dimension).
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub values: &'a [f32],
    pub offset: usize,
    pub strides: [usize; 4],
}

impl<'a> Operand<'a> {
    fn at(&self, a: usize, b: usize, c: usize) -> usize {
        let s = self.strides;
        self.offset + a * s[0] + b * s[1] + c * s[2]
    }

    /// `[a, b, c, ..len]`, one slice (the last dimension has stride 1).
    fn row(&self, a: usize, b: usize, c: usize, len: usize) -> &'a [f32] {
        let at = self.at(a, b, c);
        &self.values[at..at + len]
    }
}

/// Attention of `q: [batch, heads, queries, dim]` over `k, v: [batch, kv_heads, keys, dim]`
/// (query head `h` reads KV head `h / (heads / kv_heads)`), scale `scale`, with an additive
/// `bias` (`[batch, heads, queries, keys]`, broadcast by zero strides) and, if `causal`,
/// query `i` seeing keys `0..=keys - queries + i` only. q, k and v have rows of stride 1.
pub(crate) struct Problem<'a> {
    pub q: Operand<'a>,
    pub k: Operand<'a>,
    pub v: Operand<'a>,
    pub bias: Option<Operand<'a>>,
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub dim: usize,
    pub scale: f32,
    pub causal: bool,
}

impl Problem<'_> {
    /// The output laid out `[batch, queries, heads, dim]` (the layout the output projection
    /// reads, so that a model's `swap_dims(1, 2).reshape(..)` after attention copies
    /// nothing), computed with `isa`'s instructions (AVX2+FMA for any but [`Isa::Scalar`]
    /// where the CPU has them) over the kernels' pool. A query that sees no key gets zeros.
    pub fn run(&self, isa: Isa) -> Vec<f32> {
        let Problem {
            batch,
            heads,
            kv_heads,
            queries,
            keys,
            dim,
            ..
        } = *self;
        let pool = Pool::global();
        // K of each (batch, KV head) as panels of PANEL keys, each [dim][PANEL].
        let panels = keys.div_ceil(PANEL);
        let mut packed = vec![0f32; batch * kv_heads * panels * PANEL * dim];
        {
            let parts: Vec<Mutex<&mut [f32]>> = packed
                .chunks_mut((panels * PANEL * dim).max(1))
                .map(Mutex::new)
                .collect();
            pool.run(parts.len(), &|bk| {
                let mut part = parts[bk].lock().unwrap_or_else(|e| e.into_inner());
                self.pack(bk / kv_heads, bk % kv_heads, &mut part);
            });
        }
        // A part is a tile of queries of one batch row, every head: one run of the output.
        // Tiles of at most TILE rows, smaller when that leaves the pool's threads fewer than
        // about four parts each.
        let tile = (queries * batch)
            .div_ceil(4 * pool.threads())
            .next_multiple_of(ROWS)
            .clamp(ROWS, TILE);
        let tiles = queries.div_ceil(tile);
        let mut out = vec![0f32; batch * queries * heads * dim];
        let parts: Vec<Mutex<&mut [f32]>> = out
            .chunks_mut(queries * heads * dim)
            .flat_map(|row| row.chunks_mut(tile * heads * dim))
            .map(Mutex::new)
            .collect();
        let simd = simd_here(isa);
        // The last tiles (the most keys, when causal) first, so that the pool's threads end
        // together.
        pool.run(parts.len(), &|i| {
            let (t, b) = (tiles - 1 - i / batch, i % batch);
            let mut part = parts[b * tiles + t]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let packed = &packed[b * kv_heads * panels * PANEL * dim..];
            self.tile(simd, b, packed, t * tile, &mut part);
        });
        out
    }

    /// Packs K of batch row `b`, KV head `kv` into `out`: panel `p`'s `[j][l]` holds
    /// `k[b, kv, p * PANEL + l, j]`, zero past the keys.
    fn pack(&self, b: usize, kv: usize, out: &mut [f32]) {
        let dim = self.dim;
        for (t, key) in (0..self.keys).map(|t| (t, self.k.row(b, kv, t, dim))) {
            let panel = &mut out[t / PANEL * PANEL * dim..][..PANEL * dim];
            for (j, &x) in key.iter().enumerate() {
                panel[j * PANEL + t % PANEL] = x;
            }
        }
    }

    /// Queries `first..` of every head of batch row `b`, as many as `out` (`[rows, heads,
    /// dim]`) holds; `packed` starts at the row's packed K.
    fn tile(&self, simd: bool, b: usize, packed: &[f32], first: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd_here` found AVX2 and FMA on this CPU.
            return unsafe { self.tile_avx2(b, packed, first, out) };
        }
        let _ = simd;
        self.tile_on::<false>(b, packed, first, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(&self, b: usize, packed: &[f32], first: usize, out: &mut [f32]) {
        self.tile_on::<true>(b, packed, first, out);
    }

    /// [`Problem::tile`] in blocks of [`ROWS`] queries. `FMA`: products and sums as fused
    /// multiply-adds (only where the CPU has them: `mul_add` is a library call elsewhere).
    #[inline(always)]
    fn tile_on<const FMA: bool>(&self, b: usize, packed: &[f32], first: usize, out: &mut [f32]) {
        let (heads, dim) = (self.heads, self.dim);
        let per_kv = self.keys.div_ceil(PANEL) * PANEL * dim;
        let count = out.len() / (heads * dim);
        let mut block = Block::new(dim);
        for h in 0..heads {
            let kv = h / (heads / self.kv_heads);
            let packed = &packed[kv * per_kv..(kv + 1) * per_kv];
            for r0 in (0..count).step_by(ROWS) {
                let (i0, rows) = (first + r0, ROWS.min(count - r0));
                block.start(self, b, h, i0, rows);
                self.block_on::<FMA>(&mut block, b, h, packed, i0, rows);
                for r in 0..rows {
                    let total = block.sum[r];
                    if total > 0.0 {
                        let at = ((r0 + r) * heads + h) * dim;
                        let o = &block.out[r * dim..(r + 1) * dim];
                        for (y, &x) in out[at..at + dim].iter_mut().zip(o) {
                            *y = x / total;
                        }
                    }
                }
            }
        }
    }

    /// The keys of queries `i0..i0 + rows` of head `h`, batch row `b`, into `block`.
    #[inline(always)]
    fn block_on<const FMA: bool>(
        &self,
        block: &mut Block,
        b: usize,
        h: usize,
        packed: &[f32],
        i0: usize,
        rows: usize,
    ) {
        let dim = self.dim;
        let kv = h / (self.heads / self.kv_heads);
        let seen = &block.range[..rows];
        let lo = seen.iter().map(|r| r.0).min().unwrap_or(0) / PANEL * PANEL;
        let hi = seen.iter().map(|r| r.1).max().unwrap_or(0);
        let (queries, _) = block.q.as_chunks::<ROWS>();
        for start in (lo..hi).step_by(BLOCK) {
            let n = BLOCK.min(hi - start);
            // scores[r][t] = q_r . k_{start + t} (q scaled), a panel at a time.
            for p in 0..n.div_ceil(PANEL) {
                let first = (start / PANEL + p) * PANEL * dim;
                let (panel, _) = packed[first..first + PANEL * dim].as_chunks::<PANEL>();
                let mut acc = [[0f32; PANEL]; ROWS];
                for (keys, q) in panel.iter().zip(queries) {
                    for (acc, &x) in acc.iter_mut().zip(q) {
                        for (a, &k) in acc.iter_mut().zip(keys) {
                            *a = fma::<FMA>(x, k, *a);
                        }
                    }
                }
                for (scores, acc) in block.scores.iter_mut().zip(&acc) {
                    scores[p * PANEL..(p + 1) * PANEL].copy_from_slice(acc);
                }
            }
            // The hidden keys, the bias, then the online softmax of each row (over the whole
            // block: the keys past `n` are hidden, weight 0).
            for r in 0..ROWS {
                let scores = &mut block.scores[r];
                let (from, to) = block.range[r];
                let from = from.saturating_sub(start).min(BLOCK);
                let to = to.saturating_sub(start).clamp(from, BLOCK);
                scores[..from].fill(f32::NEG_INFINITY);
                scores[to..].fill(f32::NEG_INFINITY);
                if let Some(bias) = self.bias.filter(|_| r < rows) {
                    let (at, step) = (bias.at(b, h, i0 + r), bias.strides[3]);
                    for (t, s) in scores[from..to].iter_mut().enumerate() {
                        *s += bias.values[at + (start + from + t) * step];
                    }
                }
                let new_max = block.max[r].max(max_of(scores));
                if new_max == f32::NEG_INFINITY {
                    // Nothing seen yet: no weight, nothing to rescale.
                    scores.fill(0.0);
                    continue;
                }
                for s in scores.iter_mut() {
                    *s = exp_nonpositive::<FMA>(*s - new_max);
                }
                if new_max > block.max[r] {
                    let alpha = exp_nonpositive::<FMA>(block.max[r] - new_max);
                    block.sum[r] *= alpha;
                    for o in &mut block.out[r * dim..(r + 1) * dim] {
                        *o *= alpha;
                    }
                    block.max[r] = new_max;
                }
                block.sum[r] += sum_of(scores);
            }
            // out[r] += sum_t weights[r][t] * v_{start + t}, CHUNK columns at a time.
            let (vs, v0, vt) = (self.v.values, self.v.at(b, kv, start), self.v.strides[2]);
            let whole = dim / CHUNK * CHUNK;
            for c in (0..whole).step_by(CHUNK) {
                let mut acc = [[0f32; CHUNK]; ROWS];
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc.copy_from_slice(&block.out[r * dim + c..r * dim + c + CHUNK]);
                }
                for t in 0..n {
                    let at = v0 + t * vt + c;
                    let values = &vs[at..at + CHUNK];
                    for (acc, weights) in acc.iter_mut().zip(&block.scores) {
                        let w = weights[t];
                        for (a, &x) in acc.iter_mut().zip(values) {
                            *a = fma::<FMA>(w, x, *a);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    block.out[r * dim + c..r * dim + c + CHUNK].copy_from_slice(acc);
                }
            }
            // The columns past the last whole chunk (a head_dim not a multiple of CHUNK).
            for t in (0..n).filter(|_| whole < dim) {
                let at = v0 + t * vt;
                let values = &vs[at + whole..at + dim];
                for r in 0..rows {
                    let w = block.scores[r][t];
                    let out = &mut block.out[r * dim + whole..(r + 1) * dim];
                    for (o, &x) in out.iter_mut().zip(values) {
                        *o = fma::<FMA>(w, x, *o);
                    }
                }
            }
        }
    }
}

/// One block of query rows' state: the scaled queries, the running maxima, sums and
/// (unnormalized) outputs, and one key block's scores (then weights).
struct Block {
    /// `[dim][ROWS]`: query `r`'s element `j` at `j * ROWS + r` (zero for missing rows).
    q: Vec<f32>,
    /// `[ROWS][dim]`.
    out: Vec<f32>,
    scores: [[f32; BLOCK]; ROWS],
    max: [f32; ROWS],
    sum: [f32; ROWS],
    /// The keys each row may see, `from..to` (before the bias).
    range: [(usize, usize); ROWS],
}

impl Block {
    fn new(dim: usize) -> Self {
        Self {
            q: vec![0.0; ROWS * dim],
            out: vec![0.0; ROWS * dim],
            scores: [[0.0; BLOCK]; ROWS],
            max: [f32::NEG_INFINITY; ROWS],
            sum: [0.0; ROWS],
            range: [(0, 0); ROWS],
        }
    }

    /// Resets the state for queries `i0..i0 + rows` of head `h`, batch row `b`.
    fn start(&mut self, p: &Problem<'_>, b: usize, h: usize, i0: usize, rows: usize) {
        let dim = p.dim;
        self.q.fill(0.0);
        self.out.fill(0.0);
        self.max = [f32::NEG_INFINITY; ROWS];
        self.sum = [0.0; ROWS];
        self.range = [(0, 0); ROWS];
        for r in 0..rows {
            let i = i0 + r;
            for (j, &x) in p.q.row(b, h, i, dim).iter().enumerate() {
                self.q[j * ROWS + r] = x * p.scale;
            }
            let to = if p.causal {
                p.keys - p.queries + i + 1
            } else {
                p.keys
            };
            self.range[r] = match p.bias {
                // A key the bias hides (-inf) at either end costs no product.
                Some(bias) => {
                    let (at, step) = (bias.at(b, h, i), bias.strides[3]);
                    let seen = |t: &usize| bias.values[at + t * step] != f32::NEG_INFINITY;
                    match (0..to).find(seen) {
                        Some(from) => (from, (from..to).rfind(seen).map_or(from, |t| t + 1)),
                        None => (0, 0),
                    }
                }
                None => (0, to),
            };
        }
    }
}

/// The largest of `x` (`-inf` for none), in eight independent lanes (which vectorize).
#[inline(always)]
fn max_of(x: &[f32; BLOCK]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    for c in x.as_chunks::<8>().0 {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    lanes.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l))
}

/// The sum of `x` in eight independent lanes.
#[inline(always)]
fn sum_of(x: &[f32; BLOCK]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.as_chunks::<8>().0 {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum()
}

/// Whether `isa` asks for, and this CPU has, AVX2 with FMA.
pub(crate) fn simd_here(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa != Isa::Scalar
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// `a * b + c`, fused where `FMA`.
#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x <= 0` (and `-inf`), branch-free so that loops of it vectorize: Cephes'
/// `expf` (range reduction by `ln 2` in two parts, a degree-6 polynomial; relative error
/// about 1e-7), 0 below -87 (where `e^x` leaves f32's normal range).
#[inline(always)]
pub(crate) fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer, which its low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.max(-87.0);
    let shifted = fma::<FMA>(clamped, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = fma::<FMA>(n, -0.693_359_4, clamped);
    let r = fma::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = fma::<FMA>(p, r, c);
    }
    let y = fma::<FMA>(p, r * r, r) + 1.0;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((exponent.wrapping_add(127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library_on_its_range() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            for e in [exp_nonpositive::<false>(x), exp_nonpositive::<true>(x)] {
                let want = x.exp();
                worst = worst.max((e - want).abs() / want);
            }
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive::<false>(-100.0), 0.0);
        assert_eq!(exp_nonpositive::<false>(0.0), 1.0);
    }
}
