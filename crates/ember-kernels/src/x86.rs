//! AVX2 dot products (with FMA and F16C): 32 weights times 32 quantized inputs as one
//! `maddubs` (unsigned 8-bit times signed 8-bit, pairs summed to 16 bits) and one `madd`
//! (pairs summed to 32 bits), or one AVX-512 VNNI `dpbusd` (quadruples summed to 32 bits);
//! a block's eight 32-bit sums are scaled and accumulated in f32. No 16-bit sum can
//! saturate: |u| <= 31 (B4/B5) or |q| <= 128 (B8) times |x| <= 127, twice.

use std::arch::x86_64::*;

use crate::{Layout, BLOCK};

/// `R` weight rows (whole blocks of `layout`, `ds[0].len()` blocks each) dotted with `C`
/// quantized input rows: `out[i][j] = w[i] . x[j]`. Each weight block is loaded and unpacked
/// once for the `C` inputs and each input block once for the `R` rows, and the horizontal
/// sums are paid once per tile, not once per row (a decoded token is ~200k row products).
/// `vnni`: the block products as AVX-512 VNNI `dpbusd` (one instruction for AVX2's
/// `maddubs` + `madd`), on 256-bit registers.
///
/// A row's blocks are `step` bytes apart.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and AVX-512 VNNI and VL when `vnni`; every `w[i]`
/// starts `ds[0].len()` blocks of `layout`, `step` bytes apart; every `ds[j]` has as many
/// scales and every `q[j]` 32 values per block.
pub unsafe fn tile<const R: usize, const C: usize>(
    vnni: bool,
    layout: Layout,
    w: [*const u8; R],
    step: usize,
    ds: [&[[f32; 2]]; C],
    q: [&[i8]; C],
) -> [[f32; C]; R] {
    let blocks = ds[0].len();
    debug_assert!((0..C).all(|j| ds[j].len() == blocks && q[j].len() >= blocks * BLOCK));
    let ds = ds.map(|d| d.as_ptr().cast::<f32>());
    let q = q.map(<[i8]>::as_ptr);
    match (vnni, layout) {
        (false, Layout::B4) => tile_avx2::<B4, R, C>(w, step, blocks, ds, q),
        (false, Layout::B5) => tile_avx2::<B5, R, C>(w, step, blocks, ds, q),
        (false, Layout::B8) => tile_avx2::<B8, R, C>(w, step, blocks, ds, q),
        (true, Layout::B4) => tile_vnni::<B4, R, C>(w, step, blocks, ds, q),
        (true, Layout::B5) => tile_vnni::<B5, R, C>(w, step, blocks, ds, q),
        (true, Layout::B8) => tile_vnni::<B8, R, C>(w, step, blocks, ds, q),
    }
}

/// [`tile`] for [`Layout::B8`] on 512-bit registers, two blocks per register: a block pair
/// takes one `dpbusd`, one conversion, a scale product and a multiply-add for a row and an
/// input, where 256-bit registers take that for each block (docs/performance.md, change 24).
/// An odd last block goes through [`tile`]'s 256-bit loop.
///
/// B4 and B5 take [`tile_b45_zmm`]: their offsets (`m * sum(x)`) accumulated in the same
/// lanes as the products cost no instruction but moved SmolLM2's f16 logits 2.5x further
/// from the dequantized run's (change 24).
///
/// # Safety
/// As [`tile`], and the CPU must support AVX-512 F, BW, VL and VNNI.
pub unsafe fn tile_b8_zmm<const R: usize, const C: usize>(
    w: [*const u8; R],
    step: usize,
    ds: [&[[f32; 2]]; C],
    q: [&[i8]; C],
) -> [[f32; C]; R] {
    let blocks = ds[0].len();
    debug_assert!((0..C).all(|j| ds[j].len() == blocks && q[j].len() >= blocks * BLOCK));
    let mut out = tile_b8_512::<R, C>(
        w,
        step,
        blocks / 2,
        ds.map(|d| d.as_ptr().cast::<f32>()),
        q.map(<[i8]>::as_ptr),
    );
    add_odd_block(Layout::B8, &mut out, w, step, ds, q);
    out
}

/// The 512-bit loop over `pairs` block pairs. Lanes 0..8 of a register hold block `2p`'s
/// eight 32-bit sums, lanes 8..16 block `2p + 1`'s; the scales are laid out alike.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_b8_512<const R: usize, const C: usize>(
    w: [*const u8; R],
    step: usize,
    pairs: usize,
    ds: [*const f32; C],
    q: [*const i8; C],
) -> [[f32; C]; R] {
    // Lane i of a permute takes element `index[i]` of a 4-float vector: the inputs' d_x
    // (elements 0 and 2 of [d, sum, d, sum]) by halves, the weights' [d0, d1] of each
    // block by quarters (d0 for values 0..16, d1 for 16..32).
    let halves = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    let quarters = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for p in 0..pairs {
        let b = 2 * p;
        let x: [__m512i; C] =
            std::array::from_fn(|j| _mm512_loadu_si512(q[j].add(b * BLOCK).cast()));
        let dx: [__m512; C] = std::array::from_fn(|j| {
            _mm512_permutexvar_ps(
                halves,
                _mm512_castps128_ps512(_mm_loadu_ps(ds[j].add(2 * b))),
            )
        });
        for i in 0..R {
            let (b0, b1) = (w[i].add(b * step), w[i].add((b + 1) * step));
            // Both blocks' f16 scales: [d0(b), d1(b), d0(b + 1), d1(b + 1)].
            let scales = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_unpacklo_epi32(
                _mm_cvtsi32_si128(b0.cast::<i32>().read_unaligned()),
                _mm_cvtsi32_si128(b1.cast::<i32>().read_unaligned()),
            )));
            let dw = _mm512_permutexvar_ps(quarters, scales);
            let wq = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(4).cast())),
                _mm256_loadu_si256(b1.add(4).cast()),
                1,
            );
            // |w| times x with w's sign, as dpbusd (unsigned times signed) needs.
            let negative = _mm512_movepi8_mask(wq);
            let aw = _mm512_abs_epi8(wq);
            for j in 0..C {
                let signed = _mm512_mask_sub_epi8(x[j], negative, _mm512_setzero_si512(), x[j]);
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, signed);
                acc[i][j] = _mm512_fmadd_ps(
                    _mm512_mul_ps(dw, dx[j]),
                    _mm512_cvtepi32_ps(sums),
                    acc[i][j],
                );
            }
        }
    }
    std::array::from_fn(|i| std::array::from_fn(|j| _mm512_reduce_add_ps(acc[i][j])))
}

/// [`tile`] for [`Layout::B4`] and [`Layout::B5`] on 512-bit registers, two blocks per
/// register, like [`tile_b8_zmm`]: a block pair takes one `dpbusd`, one conversion, a scale
/// product and a multiply-add for a row and an input. The offsets `m * sum(x)` do not share
/// the pair loop's lanes block by block (change 24 measured that worse in f16): before the
/// loop they are put in the accumulators as `mins[i] . sums(x[j])`, sixteen blocks per
/// multiply-add, from `mins` (each row's offsets as f32, [`mins`]); the products' lanes are
/// summed once at the end as before. An odd last block goes through [`tile`]'s 256-bit loop.
///
/// # Safety
/// As [`tile`], and the CPU must support AVX-512 F, BW, VL and VNNI; `layout` is B4 or B5;
/// `mins[i]` holds at least `ds[0].len()` values.
pub unsafe fn tile_b45_zmm<const R: usize, const C: usize>(
    layout: Layout,
    w: [*const u8; R],
    step: usize,
    ds: [&[[f32; 2]]; C],
    q: [&[i8]; C],
    mins: [&[f32]; R],
) -> [[f32; C]; R] {
    let blocks = ds[0].len();
    debug_assert!((0..C).all(|j| ds[j].len() == blocks && q[j].len() >= blocks * BLOCK));
    debug_assert!((0..R).all(|i| mins[i].len() >= blocks));
    debug_assert!(layout != Layout::B8);
    let (ds_at, q_at, mins_at) = (
        ds.map(|d| d.as_ptr().cast::<f32>()),
        q.map(<[i8]>::as_ptr),
        mins.map(<[f32]>::as_ptr),
    );
    let mut out = if layout == Layout::B5 {
        tile_b45_512::<B5, R, C>(w, step, blocks / 2, ds_at, q_at, mins_at)
    } else {
        tile_b45_512::<B4, R, C>(w, step, blocks / 2, ds_at, q_at, mins_at)
    };
    add_odd_block(layout, &mut out, w, step, ds, q);
    out
}

/// [`tile_b45_zmm`] with the inputs also in the pair order (`xp`: the `C` inputs' values,
/// each block pair shuffled, one input after the other; `dp`: their scales, 16 lanes per
/// pair; [`crate::Paired`]), for tiles of many inputs (change 46). The offsets and an odd
/// last block still read `ds` and `q`.
///
/// # Safety
/// As [`tile_b45_zmm`]; `xp` holds `C * 2 * BLOCK` values and `dp` `C * 16` per block pair.
pub unsafe fn tile_b45_zmm_paired<const R: usize, const C: usize>(
    layout: Layout,
    w: [*const u8; R],
    step: usize,
    (ds, q): ([&[[f32; 2]]; C], [&[i8]; C]),
    (xp, dp): (&[i8], &[f32]),
    mins: [&[f32]; R],
) -> [[f32; C]; R] {
    let blocks = ds[0].len();
    let pairs = blocks / 2;
    assert!(xp.len() >= C * pairs * 2 * BLOCK && dp.len() >= C * pairs * 16);
    debug_assert!((0..R).all(|i| mins[i].len() >= blocks));
    debug_assert!(layout != Layout::B8);
    let (ds_at, xp_at, dp_at, mins_at) = (
        ds.map(|d| d.as_ptr().cast::<f32>()),
        xp.as_ptr(),
        dp.as_ptr(),
        mins.map(<[f32]>::as_ptr),
    );
    let mut out = if layout == Layout::B5 {
        tile_b45_paired::<B5, R, C>(w, step, pairs, ds_at, xp_at, dp_at, mins_at)
    } else {
        tile_b45_paired::<B4, R, C>(w, step, pairs, ds_at, xp_at, dp_at, mins_at)
    };
    add_odd_block(layout, &mut out, w, step, ds, q);
    out
}

/// Adds to `out` the last block's products where a row has an odd number of blocks (the
/// 512-bit loops take blocks in pairs), by [`tile`]'s 256-bit loop.
///
/// # Safety
/// As [`tile`] with `vnni`.
unsafe fn add_odd_block<const R: usize, const C: usize>(
    layout: Layout,
    out: &mut [[f32; C]; R],
    w: [*const u8; R],
    step: usize,
    ds: [&[[f32; 2]]; C],
    q: [&[i8]; C],
) {
    let blocks = ds[0].len();
    if blocks.is_multiple_of(2) {
        return;
    }
    let last = blocks - 1;
    let tail = tile::<R, C>(
        true,
        layout,
        w.map(|p| p.add(last * step)),
        step,
        std::array::from_fn(|j| &ds[j][last..]),
        std::array::from_fn(|j| &q[j][last * BLOCK..]),
    );
    for (row, tail) in out.iter_mut().zip(tail) {
        for (v, t) in row.iter_mut().zip(tail) {
            *v += t;
        }
    }
}

/// Each of `w.len()` rows' B4 or B5 offsets `m` (blocks `step` bytes apart from `w[i]`,
/// `blocks` of them; both layouts start `d: f16, m: f16`) as f32 into `out[i * blocks..]`,
/// for [`tile_b45_zmm`]: eight blocks' f16 at a time, put in one register by 16-bit inserts
/// and converted together. (A scalar loop was 18 % of a batched decode step; one gather of
/// sixteen, which replaced it, was still ~15 % of a batched product on an AMD EPYC, whose
/// gathers are slow: change 50.)
///
/// # Safety
/// The CPU must support AVX2 and F16C; every `w[i]` starts `blocks` B4 blocks `step` bytes
/// apart; `out` has room for `w.len() * blocks` values (which may be uninitialized).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mins(w: &[*const u8], step: usize, blocks: usize, out: *mut f32) {
    for (i, &row) in w.iter().enumerate() {
        let m = |b: usize| row.add(b * step + 2).cast::<i16>().read_unaligned();
        let out = out.add(i * blocks);
        let whole = blocks - blocks % 8;
        for b in (0..whole).step_by(8) {
            let halves = _mm_setr_epi16(
                m(b),
                m(b + 1),
                m(b + 2),
                m(b + 3),
                m(b + 4),
                m(b + 5),
                m(b + 6),
                m(b + 7),
            );
            _mm256_storeu_ps(out.add(b), _mm256_cvtph_ps(halves));
        }
        for b in whole..blocks {
            let half = _mm_cvtsi32_si128(i32::from(m(b) as u16));
            *out.add(b) = _mm_cvtss_f32(_mm_cvtph_ps(half));
        }
    }
}

/// The 512-bit loop of [`tile_b45_zmm`] over `pairs` block pairs, and the offsets of those
/// `2 * pairs` blocks (first: change 27). A row's pair of blocks is unpacked as the 128-bit
/// lanes `[lo(b), lo(b + 1), hi(b), hi(b + 1)]` ([`unpack_pair`]), and an input's pair is
/// shuffled to that order, once per input for the tile's `R` rows; lanes 0..4 and 8..12 of
/// a sum then belong to block `b`, 4..8 and 12..16 to block `b + 1`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_b45_512<const L: u8, const R: usize, const C: usize>(
    w: [*const u8; R],
    step: usize,
    pairs: usize,
    ds: [*const f32; C],
    q: [*const i8; C],
    mins: [*const f32; R],
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    add_offsets(&mut acc, 2 * pairs, ds, mins);
    for p in 0..pairs {
        let b = 2 * p;
        // [lo(b), hi(b), lo(b + 1), hi(b + 1)] -> [lo(b), lo(b + 1), hi(b), hi(b + 1)].
        let x: [__m512i; C] = std::array::from_fn(|j| {
            let v = _mm512_loadu_si512(q[j].add(b * BLOCK).cast());
            _mm512_shuffle_i64x2(v, v, 0b11_01_10_00)
        });
        let dx: [__m512; C] = std::array::from_fn(|j| {
            _mm512_permutexvar_ps(
                pair_lanes(),
                _mm512_castps128_ps512(_mm_loadu_ps(ds[j].add(2 * b))),
            )
        });
        for i in 0..R {
            let (dw, u) = unpack_pair::<L>(w[i].add(b * step), w[i].add((b + 1) * step));
            for j in 0..C {
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x[j]);
                acc[i][j] = _mm512_fmadd_ps(
                    _mm512_mul_ps(dw, dx[j]),
                    _mm512_cvtepi32_ps(sums),
                    acc[i][j],
                );
            }
        }
    }
    std::array::from_fn(|i| std::array::from_fn(|j| _mm512_reduce_add_ps(acc[i][j])))
}

/// [`tile_b45_512`] with the inputs already in the pair order ([`crate::Paired`]: each
/// block pair's values shuffled, its scales as 16 lanes), read from memory where they are
/// used: no shuffle or permute per tile, so a tile can take 8 inputs for 2 rows (16
/// accumulators) and unpack each row's block pair once for all 8 (change 46).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_b45_paired<const L: u8, const R: usize, const C: usize>(
    w: [*const u8; R],
    step: usize,
    pairs: usize,
    ds: [*const f32; C],
    xp: *const i8,
    dp: *const f32,
    mins: [*const f32; R],
) -> [[f32; C]; R] {
    // Input j's pairs start `j * pairs` pairs in.
    let (x_stride, d_stride) = (pairs * 2 * BLOCK, pairs * 16);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    add_offsets(&mut acc, 2 * pairs, ds, mins);
    for p in 0..pairs {
        let b = 2 * p;
        // (A loop, not `array::from_fn`: its closure does not take this function's target
        // features, so it was called, not inlined.)
        let mut rows = [(_mm512_setzero_ps(), _mm512_setzero_si512()); R];
        for (i, row) in rows.iter_mut().enumerate() {
            *row = unpack_pair::<L>(w[i].add(b * step), w[i].add((b + 1) * step));
        }
        // Input by input, so that an input's two registers serve the rows and die (`j`
        // picks a column of every row's accumulators).
        #[allow(clippy::needless_range_loop)]
        for j in 0..C {
            let x = _mm512_loadu_si512(xp.add(j * x_stride + p * 2 * BLOCK).cast());
            let dx = _mm512_loadu_ps(dp.add(j * d_stride + p * 16));
            for (i, &(dw, u)) in rows.iter().enumerate() {
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x);
                acc[i][j] =
                    _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(sums), acc[i][j]);
            }
        }
    }
    // Loops, not `array::from_fn`: a closure that reads `acc` kept it in memory, stored at
    // every multiply-add.
    let mut out = [[0f32; C]; R];
    for (out, acc) in out.iter_mut().zip(&acc) {
        for (o, a) in out.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(*a);
        }
    }
    out
}

/// The permutation that lays a block pair's `[s_b, _, s_b1, _]` onto the lanes of its sums:
/// block b's in lanes 0..4 and 8..12, block b + 1's in 4..8 and 12..16.
#[inline(always)]
unsafe fn pair_lanes() -> __m512i {
    _mm512_set_epi32(2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0)
}

/// Puts the offsets of `blocks` blocks in the accumulators as `mins[i] . sums(x[j])`,
/// sixteen blocks per multiply-add (an input's sums are every second value of its `[d,
/// sum]` pairs).
#[inline(always)]
unsafe fn add_offsets<const R: usize, const C: usize>(
    acc: &mut [[__m512; C]; R],
    blocks: usize,
    ds: [*const f32; C],
    mins: [*const f32; R],
) {
    let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for start in (0..blocks).step_by(16) {
        let len = (blocks - start).min(16);
        let mask = (1u32 << len).wrapping_sub(1) as __mmask16;
        let (lo, hi) = (mask_pairs(len), mask_pairs(len.saturating_sub(8)));
        let sums: [__m512; C] = std::array::from_fn(|j| {
            let at = ds[j].add(2 * start);
            _mm512_permutex2var_ps(
                _mm512_maskz_loadu_ps(lo, at),
                odd,
                _mm512_maskz_loadu_ps(hi, at.add(16)),
            )
        });
        for i in 0..R {
            let m = _mm512_maskz_loadu_ps(mask, mins[i].add(start));
            for j in 0..C {
                acc[i][j] = _mm512_fmadd_ps(m, sums[j], acc[i][j]);
            }
        }
    }
}

/// A row's B4 or B5 blocks `b0, b1` (a pair): their scales `d` on the lanes of the pair's
/// sums ([`pair_lanes`]) and their values unpacked as the 128-bit lanes `[lo(b), lo(b + 1),
/// hi(b), hi(b + 1)]` (low nibbles, values 0..16; high, 16..32), B5's fifth bits added by a
/// mask in the same order (change 33).
#[inline(always)]
unsafe fn unpack_pair<const L: u8>(b0: *const u8, b1: *const u8) -> (__m512, __m512i) {
    // Both blocks' f16 [d, m]: [d(b), m(b), d(b + 1), m(b + 1)].
    let scales = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_unpacklo_epi32(
        _mm_cvtsi32_si128(b0.cast::<i32>().read_unaligned()),
        _mm_cvtsi32_si128(b1.cast::<i32>().read_unaligned()),
    )));
    let dw = _mm512_permutexvar_ps(pair_lanes(), scales);
    let nibbles_at = if L == B5 { 8 } else { 4 };
    let packed = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(b0.add(nibbles_at).cast())),
        _mm_loadu_si128(b1.add(nibbles_at).cast()),
        1,
    );
    let mut u = _mm512_and_si512(
        _mm512_inserti64x4(
            _mm512_castsi256_si512(packed),
            _mm256_srli_epi16(packed, 4),
            1,
        ),
        _mm512_set1_epi8(0x0F),
    );
    if L == B5 {
        // Bit k of a block's word is value k's fifth bit: values 0..16 of b, of b + 1, then
        // 16..32 of b, of b + 1, as the lanes above.
        let (f0, f1) = (
            u64::from(b0.add(4).cast::<u32>().read_unaligned()),
            u64::from(b1.add(4).cast::<u32>().read_unaligned()),
        );
        let fifth = (f0 & 0xFFFF) | (f1 & 0xFFFF) << 16 | (f0 >> 16) << 32 | (f1 >> 16) << 48;
        u = _mm512_mask_add_epi8(u, fifth, u, _mm512_set1_epi8(0x10));
    }
    (dw, u)
}

/// The load mask of `blocks` (at most 8) blocks' `[d, sum]` pairs: two lanes each.
#[inline(always)]
fn mask_pairs(blocks: usize) -> __mmask16 {
    ((1u32 << (2 * blocks.min(8))) - 1) as __mmask16
}

/// [`Layout`]s as const parameters (one loop per layout, no branch inside it).
const B4: u8 = 0;
const B5: u8 = 1;
const B8: u8 = 2;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const L: u8, const R: usize, const C: usize>(
    w: [*const u8; R],
    step: usize,
    blocks: usize,
    ds: [*const f32; C],
    q: [*const i8; C],
) -> [[f32; C]; R] {
    tile_body::<L, R, C, false>(w, step, blocks, ds, q)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn tile_vnni<const L: u8, const R: usize, const C: usize>(
    w: [*const u8; R],
    step: usize,
    blocks: usize,
    ds: [*const f32; C],
    q: [*const i8; C],
) -> [[f32; C]; R] {
    tile_body::<L, R, C, true>(w, step, blocks, ds, q)
}

/// The tile's loop, inlined into each instruction set's entry (whose target features the
/// intrinsics here then take).
#[inline(always)]
unsafe fn tile_body<const L: u8, const R: usize, const C: usize, const VNNI: bool>(
    w: [*const u8; R],
    step: usize,
    blocks: usize,
    ds: [*const f32; C],
    q: [*const i8; C],
) -> [[f32; C]; R] {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    // [d_w * d_x, m * sum_x] per block, summed: the offsets' share in the second lane.
    let mut off = [[_mm_setzero_ps(); C]; R];
    for b in 0..blocks {
        let x: [__m256i; C] =
            std::array::from_fn(|j| _mm256_loadu_si256(q[j].add(b * BLOCK).cast()));
        let xs: [__m128; C] =
            std::array::from_fn(|j| _mm_castsi128_ps(_mm_loadl_epi64(ds[j].add(2 * b).cast())));
        for i in 0..R {
            let block = w[i].add(b * step);
            if L == B8 {
                // [d0, d1] as four lanes of d0 (values 0..16) then four of d1 (16..32).
                let d01 = two_halves(block);
                let lanes = _mm256_set_m128(
                    _mm_shuffle_ps(d01, d01, 0b01_01_01_01),
                    _mm_shuffle_ps(d01, d01, 0),
                );
                let wq = _mm256_loadu_si256(block.add(4).cast());
                // |w| times x with w's sign: unsigned times signed, as maddubs/dpbusd need.
                let aw = _mm256_sign_epi8(wq, wq);
                for j in 0..C {
                    let scale = _mm256_mul_ps(lanes, _mm256_broadcastss_ps(xs[j]));
                    let p = products::<VNNI>(aw, _mm256_sign_epi8(x[j], wq));
                    acc[i][j] = _mm256_fmadd_ps(scale, p, acc[i][j]);
                }
            } else {
                let dm = two_halves(block);
                let mut u = nibbles(block.add(if L == B4 { 4 } else { 8 }));
                if L == B5 {
                    u = _mm256_or_si256(u, fifth_bits(block.add(4)));
                }
                for j in 0..C {
                    let scaled = _mm_mul_ps(dm, xs[j]);
                    let p = products::<VNNI>(u, x[j]);
                    acc[i][j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(scaled), p, acc[i][j]);
                    off[i][j] = _mm_add_ps(off[i][j], scaled);
                }
            }
        }
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let off = off[i][j];
            sum8(acc[i][j]) + _mm_cvtss_f32(_mm_shuffle_ps(off, off, 1))
        })
    })
}

/// One weight row (blocks `step` bytes apart from `w`) dotted with one f32 input row (`x`,
/// with each block's sum in `sums`): the weights are widened to f32 and multiplied exactly,
/// no input quantization.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` starts `sums.len()` blocks of `layout`,
/// `step` bytes apart, and `x` holds 32 values per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(layout: Layout, w: *const u8, step: usize, x: &[f32], sums: &[f32]) -> f32 {
    let blocks = sums.len();
    debug_assert!(x.len() >= blocks * BLOCK);
    let x = x.as_ptr();
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for b in 0..blocks {
        let block = w.add(b * step);
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

/// One block of 32 inputs quantized as [`crate::Activations`] does (the portable path's
/// `round_to_i8` lane by lane): `q` gets the values, the result is `[d, sum]`.
///
/// # Safety
/// The CPU must support AVX2; `x` and `q` point to 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_block(x: *const f32, q: *mut i8) -> [f32; 2] {
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    let abs = |v: __m256| _mm256_andnot_ps(sign, v);
    let max = _mm256_max_ps(
        _mm256_max_ps(abs(v[0]), abs(v[1])),
        _mm256_max_ps(abs(v[2]), abs(v[3])),
    );
    let max = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
    let max = _mm_max_ps(max, _mm_movehl_ps(max, max));
    let max = _mm_cvtss_f32(_mm_max_ss(max, _mm_movehdup_ps(max)));
    let d = max / 127.0;
    let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let half = _mm256_set1_ps(0.499_999_97);
    let ints: [__m256i; 4] = std::array::from_fn(|i| {
        let t = _mm256_mul_ps(v[i], inv);
        _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_or_ps(half, _mm256_and_ps(t, sign))))
    });
    // 32-bit to 8-bit: the packs interleave 128-bit lanes, the permute puts them back.
    let bytes = _mm256_packs_epi16(
        _mm256_packs_epi32(ints[0], ints[1]),
        _mm256_packs_epi32(ints[2], ints[3]),
    );
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q.cast(), bytes);
    // The sum in the portable path's order (one running sum) would cost a serial chain; the
    // tree's order differs by f32 rounding only.
    let sum = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
    [d, sum8(sum)]
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

/// Eight 32-bit sums of `u * x` quadruples (u unsigned, x signed), as f32.
#[inline(always)]
unsafe fn products<const VNNI: bool>(u: __m256i, x: __m256i) -> __m256 {
    let sums = if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
    };
    _mm256_cvtepi32_ps(sums)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
