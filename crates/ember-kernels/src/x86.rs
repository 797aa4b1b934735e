//! AVX2 dot products (with FMA and F16C): 32 weights times 32 quantized inputs as one
//! `maddubs` (unsigned 8-bit times signed 8-bit, pairs summed to 16 bits) and one `madd`
//! (pairs summed to 32 bits); a block's eight 32-bit sums are scaled and accumulated in f32.
//! No 16-bit sum can saturate: |u| <= 31 (B4/B5) or |q| <= 128 (B8) times |x| <= 127, twice.

use std::arch::x86_64::*;

use crate::{Layout, BLOCK};

/// One weight row (whole blocks of `layout`) dotted with one quantized input row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `ds.len()` blocks and `q` 32 values
/// per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(layout: Layout, w: &[u8], ds: &[[f32; 2]], q: &[i8]) -> f32 {
    let blocks = ds.len();
    debug_assert!(w.len() >= blocks * layout.block_bytes() && q.len() >= blocks * BLOCK);
    let (w, ds, q) = (w.as_ptr(), ds.as_ptr().cast::<f32>(), q.as_ptr());
    match layout {
        Layout::B4 => dot_offset::<20, 4, false>(w, blocks, ds, q),
        Layout::B5 => dot_offset::<24, 8, true>(w, blocks, ds, q),
        Layout::B8 => dot_b8(w, blocks, ds, q),
    }
}

/// One weight row dotted with `N` quantized input rows at once (a prefill): each block of
/// weights is loaded and unpacked once for the `N` inputs.
///
/// # Safety
/// As [`dot`], for each of the `N` inputs.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_n<const N: usize>(
    layout: Layout,
    w: &[u8],
    ds: [&[[f32; 2]]; N],
    q: [&[i8]; N],
) -> [f32; N] {
    let blocks = ds[0].len();
    debug_assert!(w.len() >= blocks * layout.block_bytes());
    let ds = ds.map(|d| d.as_ptr().cast::<f32>());
    let q = q.map(<[i8]>::as_ptr);
    let w = w.as_ptr();
    let mut acc = [_mm256_setzero_ps(); N];
    let mut off = [_mm_setzero_ps(); N];
    for b in 0..blocks {
        match layout {
            Layout::B4 | Layout::B5 => {
                let (bytes, qs) = if layout == Layout::B4 {
                    (20, 4)
                } else {
                    (24, 8)
                };
                let block = w.add(b * bytes);
                let dm = two_halves(block);
                let mut u = nibbles(block.add(qs));
                if layout == Layout::B5 {
                    u = _mm256_or_si256(u, fifth_bits(block.add(4)));
                }
                for i in 0..N {
                    let xs = _mm_castsi128_ps(_mm_loadl_epi64(ds[i].add(2 * b).cast()));
                    let scaled = _mm_mul_ps(dm, xs);
                    let x = _mm256_loadu_si256(q[i].add(b * BLOCK).cast());
                    acc[i] = _mm256_fmadd_ps(_mm256_broadcastss_ps(scaled), products(u, x), acc[i]);
                    off[i] = _mm_add_ps(off[i], scaled);
                }
            }
            Layout::B8 => {
                let block = w.add(b * 36);
                let d01 = two_halves(block);
                let wq = _mm256_loadu_si256(block.add(4).cast());
                let aw = _mm256_sign_epi8(wq, wq);
                for i in 0..N {
                    let scales = _mm_mul_ps(d01, _mm_set1_ps(*ds[i].add(2 * b)));
                    let lanes = _mm256_set_m128(
                        _mm_shuffle_ps(scales, scales, 0b01_01_01_01),
                        _mm_shuffle_ps(scales, scales, 0),
                    );
                    let x = _mm256_loadu_si256(q[i].add(b * BLOCK).cast());
                    acc[i] = _mm256_fmadd_ps(lanes, products(aw, _mm256_sign_epi8(x, wq)), acc[i]);
                }
            }
        }
    }
    let mut out = [0f32; N];
    for i in 0..N {
        out[i] = sum8(acc[i]) + _mm_cvtss_f32(_mm_shuffle_ps(off[i], off[i], 1));
    }
    out
}

/// One weight row dotted with one f32 input row (`x`, with each block's sum in `sums`): the
/// weights are widened to f32 and multiplied exactly, no input quantization.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `sums.len()` blocks and `x` 32 values
/// per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(layout: Layout, w: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let blocks = sums.len();
    debug_assert!(w.len() >= blocks * layout.block_bytes() && x.len() >= blocks * BLOCK);
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for b in 0..blocks {
        let block = w.add(b * layout.block_bytes());
        let xs = x.add(b * BLOCK);
        let widen = |bytes: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        let widen_signed = |bytes: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        let dm = two_halves(block);
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        match layout {
            Layout::B4 | Layout::B5 => {
                let mut u = nibbles(block.add(if layout == Layout::B4 { 4 } else { 8 }));
                if layout == Layout::B5 {
                    u = _mm256_or_si256(u, fifth_bits(block.add(4)));
                }
                let (lo, hi) = (_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
                let mut dot = _mm256_mul_ps(widen(lo), _mm256_loadu_ps(xs));
                dot = _mm256_fmadd_ps(
                    widen(_mm_srli_si128(lo, 8)),
                    _mm256_loadu_ps(xs.add(8)),
                    dot,
                );
                dot = _mm256_fmadd_ps(widen(hi), _mm256_loadu_ps(xs.add(16)), dot);
                dot = _mm256_fmadd_ps(
                    widen(_mm_srli_si128(hi, 8)),
                    _mm256_loadu_ps(xs.add(24)),
                    dot,
                );
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), dot, acc);
                offsets += m * *sums.get_unchecked(b);
            }
            Layout::B8 => {
                let q = _mm256_loadu_si256(block.add(4).cast());
                let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                let mut first = _mm256_mul_ps(widen_signed(lo), _mm256_loadu_ps(xs));
                first = _mm256_fmadd_ps(
                    widen_signed(_mm_srli_si128(lo, 8)),
                    _mm256_loadu_ps(xs.add(8)),
                    first,
                );
                let mut second = _mm256_mul_ps(widen_signed(hi), _mm256_loadu_ps(xs.add(16)));
                second = _mm256_fmadd_ps(
                    widen_signed(_mm_srli_si128(hi, 8)),
                    _mm256_loadu_ps(xs.add(24)),
                    second,
                );
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), first, acc);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(m), second, acc);
            }
        }
    }
    sum8(acc) + offsets
}

/// The two f16 at `p` as f32: `[first, second, 0, 0]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two_halves(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()))
}

/// 16 bytes of nibbles as 32 bytes: low halves (values 0..16), then high halves (16..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let qs = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `i` of the result is 0x10 where bit `i` of the 32 bits at `p` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let bits = p.cast::<i32>().read_unaligned();
    // Byte i takes byte i / 8 of the word, then every bit but bit i % 8 is forced on: the
    // byte is all ones exactly when bit i was set.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Eight 32-bit sums of `u * x` pairs (u unsigned, x signed), as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn products(u: __m256i, x: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, x);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One block of B4 (`HIGH = false`) or B5: `[d * d_x, m * sum_x]` in the low lanes of the
/// second value, the block's eight integer sums times `d` as the first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_block<const BYTES: usize, const QS: usize, const HIGH: bool>(
    w: *const u8,
    ds: *const f32,
    q: *const i8,
    b: usize,
) -> (__m256, __m128) {
    let block = w.add(b * BYTES);
    let xs = _mm_castsi128_ps(_mm_loadl_epi64(ds.add(2 * b).cast()));
    let scaled = _mm_mul_ps(two_halves(block), xs);
    let mut u = nibbles(block.add(QS));
    if HIGH {
        u = _mm256_or_si256(u, fifth_bits(block.add(4)));
    }
    let x = _mm256_loadu_si256(q.add(b * BLOCK).cast());
    (
        _mm256_mul_ps(_mm256_broadcastss_ps(scaled), products(u, x)),
        scaled,
    )
}

/// B4 and B5 (values `d * u + m`): two blocks per step, into independent accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_offset<const BYTES: usize, const QS: usize, const HIGH: bool>(
    w: *const u8,
    blocks: usize,
    ds: *const f32,
    q: *const i8,
) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut off0, mut off1) = (_mm_setzero_ps(), _mm_setzero_ps());
    let mut b = 0;
    while b + 1 < blocks {
        let (p0, s0) = offset_block::<BYTES, QS, HIGH>(w, ds, q, b);
        let (p1, s1) = offset_block::<BYTES, QS, HIGH>(w, ds, q, b + 1);
        acc0 = _mm256_add_ps(acc0, p0);
        acc1 = _mm256_add_ps(acc1, p1);
        off0 = _mm_add_ps(off0, s0);
        off1 = _mm_add_ps(off1, s1);
        b += 2;
    }
    if b < blocks {
        let (p0, s0) = offset_block::<BYTES, QS, HIGH>(w, ds, q, b);
        acc0 = _mm256_add_ps(acc0, p0);
        off0 = _mm_add_ps(off0, s0);
    }
    let off = _mm_add_ps(off0, off1);
    sum8(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_shuffle_ps(off, off, 1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn b8_block(w: *const u8, ds: *const f32, q: *const i8, b: usize) -> __m256 {
    let block = w.add(b * 36);
    // [d0, d1] * d_x, as four lanes of d0 (values 0..16) then four of d1 (16..32).
    let scales = _mm_mul_ps(two_halves(block), _mm_set1_ps(*ds.add(2 * b)));
    let lanes = _mm256_set_m128(
        _mm_shuffle_ps(scales, scales, 0b01_01_01_01),
        _mm_shuffle_ps(scales, scales, 0),
    );
    let wq = _mm256_loadu_si256(block.add(4).cast());
    let x = _mm256_loadu_si256(q.add(b * BLOCK).cast());
    // |w| times x with w's sign: unsigned times signed, as maddubs needs.
    let p = products(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(x, wq));
    _mm256_mul_ps(lanes, p)
}

/// B8 (values `d0 * q`, `d1 * q`): two blocks per step.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_b8(w: *const u8, blocks: usize, ds: *const f32, q: *const i8) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    while b + 1 < blocks {
        acc0 = _mm256_add_ps(acc0, b8_block(w, ds, q, b));
        acc1 = _mm256_add_ps(acc1, b8_block(w, ds, q, b + 1));
        b += 2;
    }
    if b < blocks {
        acc0 = _mm256_add_ps(acc0, b8_block(w, ds, q, b));
    }
    sum8(_mm256_add_ps(acc0, acc1))
}
