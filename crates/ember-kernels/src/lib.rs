//! Matrix products on quantized weights, for backends whose tensors live in host memory.
//!
//! A weight is held in one of three block layouts ([`Layout`]), 32 values of a row per block,
//! made once at load from a GGUF tensor's integers, scales and offsets (`value = scale * u +
//! min` per group, as `ember::format::quant::unpack` decodes every block format):
//!
//! | layout | block (bytes)                              | from                          |
//! |--------|--------------------------------------------|-------------------------------|
//! | `B4`   | `d: f16, m: f16, 16 bytes of nibbles` (20) | Q4_0, Q4_1 (as stored), Q4_K  |
//! | `B5`   | `d, m, 32 fifth bits, nibbles` (24)        | Q5_0, Q5_1 (as stored), Q5_K  |
//! | `B8`   | `d0: f16, d1: f16, 32 x i8` (36)           | Q8_0, Q6_K, Q3_K              |
//!
//! `B4`/`B5` values are `d * u + m`; `B8` values are `d0 * q` for the first 16 and `d1 * q`
//! for the last 16 (Q6_K and Q3_K scale groups of 16). The 32-block types keep their f16
//! scales exactly; a K-quant's sub-block scale (`d * sc`, a 6-bit integer times an f16) is
//! rounded to f16 (relative error at most 2^-11, far below the 4-6 bit quantization step).
//! Three layouts instead of one kernel per GGUF type: fewer kernels to write, vectorize and
//! test, at 6-11% more bytes than the stored type (Q6_K: 37%).
//!
//! Rows are stored in quads ([`QUAD`]): block `b` of rows `4q..4q + 4` side by side, then
//! block `b + 1`. A product reads four rows' blocks against one input block (the input's
//! loads and the sums shared), and the weights still stream as one sequential read: on this
//! project's VM, reading four rows at once from four places in memory halved the read
//! bandwidth (23 to 12 GB/s, 31 MB read once), the hardware prefetchers following one
//! stream far better than four (docs/performance.md, change 18).
//!
//! The activations are quantized per block of 32 to 8 bits (`d_x = max|x| / 127`), as
//! llama.cpp does, so that a block's products are integer multiply-adds (AVX2 `maddubs`);
//! the offset term `m * sum(x)` uses the exact f32 sum. The dot products run on the best
//! instruction set the CPU has, detected at run time ([`Isa::detect`]), with a scalar path
//! everywhere else (ARM included) that the tests compare them with.
//!
//! Hand-written, not a crate: burn 0.21's quantized tensors hold symmetric 8/4/2-bit values
//! with a per-block f32 scale, which cannot express GGUF's offsets (Q4_1, K-quant mins)
//! without requantizing, and its flex backend dequantizes them before a float matmul.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use half::f16;

pub mod dense;
pub mod pool;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use pool::Pool;

/// Values per block.
pub const BLOCK: usize = 32;

/// Fewest inputs values [`Activations`] quantizes on one thread of the pool (64 KiB of f32).
const QUANTIZE_PIECE: usize = 16384;

/// How far ahead of the tile row being computed `tile_row` asks for the weights: two quads.
const PREFETCH_ROWS: usize = 2 * QUAD;

/// Room for a tile's rows' B4 offsets as f32 (4 rows of 16,384 columns), on the stack.
const MINS: usize = 2048;

/// Rows whose blocks are stored interleaved (see the crate docs).
pub const QUAD: usize = 4;

/// How a weight's blocks are stored (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 4-bit unsigned values with a scale and an offset per 32.
    B4,
    /// 5-bit unsigned values with a scale and an offset per 32.
    B5,
    /// Signed 8-bit values with a scale per 16.
    B8,
}

impl Layout {
    /// Bytes of one block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Layout::B4 => 20,
            Layout::B5 => 24,
            Layout::B8 => 36,
        }
    }
}

/// An instruction set a dot product can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, every CPU.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// AVX2 with AVX-512 VNNI and VL: the block products as `dpbusd`, on 256-bit registers.
    Avx512Vnni,
    /// AVX-512 F, BW, VL and VNNI: `B8` blocks two per 512-bit register, the others as
    /// `Avx512Vnni`.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU runs (`EMBER_KERNELS=scalar`, `avx2` or
    /// `avx512vnni` caps it),
    /// found once per process.
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = match std::env::var("EMBER_KERNELS").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                Ok("avx512vnni") => Isa::Avx512Vnni,
                _ => Isa::Avx512,
            };
            Self::available()
                .into_iter()
                .rfind(|&isa| isa <= cap)
                .unwrap_or(Isa::Scalar)
        })
    }

    /// Every instruction set this CPU runs, scalar first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.runs_here())
            .collect()
    }

    /// Whether this CPU runs `self` (its features are detected once per process).
    fn runs_here(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                static AVX2: OnceLock<bool> = OnceLock::new();
                *AVX2.get_or_init(|| {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                        && std::arch::is_x86_feature_detected!("f16c")
                })
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                static VNNI: OnceLock<bool> = OnceLock::new();
                Isa::Avx2.runs_here()
                    && *VNNI.get_or_init(|| {
                        std::arch::is_x86_feature_detected!("avx512f")
                            && std::arch::is_x86_feature_detected!("avx512vl")
                            && std::arch::is_x86_feature_detected!("avx512vnni")
                    })
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                static BW: OnceLock<bool> = OnceLock::new();
                Isa::Avx512Vnni.runs_here()
                    && *BW.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bw"))
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 => false,
        }
    }
}

/// How a product takes its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// Quantized to 8 bits per block of 32 (`d = max|x| / 127`), as llama.cpp does: integer
    /// multiply-adds, the faster prefill; costs accuracy where activations have outliers.
    Q8,
    /// As they are: the weights are widened to f32 instead (exact products).
    F32,
}

impl Inputs {
    /// `EMBER_KERNEL_INPUTS=f32` or `q8` (the default), read once per process.
    pub fn from_env() -> Inputs {
        static INPUTS: OnceLock<Inputs> = OnceLock::new();
        *INPUTS.get_or_init(|| match std::env::var("EMBER_KERNEL_INPUTS").as_deref() {
            Ok("f32") => Inputs::F32,
            _ => Inputs::Q8,
        })
    }
}

/// Whether products of many inputs on B4/B5 rows take 2 x 8 tiles on paired inputs (change
/// 46; the default) or 4 x 4 tiles: `EMBER_KERNEL_TILES=4x4` at start, or
/// [`set_paired_tiles`]. A developer's switch for A/B runs in one binary (the products agree
/// to f32 rounding).
static PAIRED_TILES: OnceLock<AtomicBool> = OnceLock::new();

fn paired_tiles() -> &'static AtomicBool {
    PAIRED_TILES.get_or_init(|| {
        AtomicBool::new(std::env::var("EMBER_KERNEL_TILES").as_deref() != Ok("4x4"))
    })
}

/// The most inputs a product takes the 2 x 8 tiles for ([`QuantMatrix::takes_paired`]).
const PAIRED_INPUTS: usize = 16;

/// Turns the 2 x 8 tiles of change 46 on or off for the rest of the process (see
/// `EMBER_KERNEL_TILES`); for benchmarks.
pub fn set_paired_tiles(on: bool) {
    paired_tiles().store(on, Ordering::Relaxed);
}

/// Why a weight cannot take a block layout (the caller keeps its portable form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// A quantized tensor's values as `scale[g] * u[i] + min[g]` for the group `g = i / group`
/// (row-major, whole groups per row): what `ember::format::quant::Unpacked` holds.
#[derive(Debug, Clone, Copy)]
pub struct Groups<'a> {
    /// Bits of each `u`.
    pub bits: u32,
    /// Values per group.
    pub group: usize,
    /// One integer per value.
    pub u: &'a [u8],
    /// Per group.
    pub scale: &'a [f32],
    /// Per group.
    pub min: &'a [f32],
}

/// A `[rows, cols]` weight in a block layout, rows of `cols / 32` blocks, stored by quads of
/// rows (the last quad padded with zero blocks).
#[derive(Clone)]
pub struct QuantMatrix {
    layout: Layout,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({:?}, {}x{})",
            self.layout, self.rows, self.cols
        )
    }
}

impl QuantMatrix {
    /// Packs `groups` (a `[rows, cols]` tensor) into the layout its bits and groups take.
    pub fn new(groups: Groups<'_>, rows: usize, cols: usize) -> Result<Self, Unsupported> {
        let Groups {
            bits,
            group,
            u,
            scale,
            min,
        } = groups;
        let unsupported =
            |why: &str| Err(Unsupported(format!("{bits}-bit groups of {group}: {why}")));
        if !cols.is_multiple_of(BLOCK) || rows == 0 {
            return unsupported(&format!("a row of {cols} is not whole blocks of {BLOCK}"));
        }
        let elements = rows * cols;
        if group == 0 || !BLOCK.is_multiple_of(group) {
            return unsupported("groups must divide a block");
        }
        if u.len() != elements || scale.len() != elements / group || min.len() != scale.len() {
            return unsupported("sizes do not match the shape");
        }
        let layout = match (bits, group) {
            (4, 32) => Layout::B4,
            (5, 32) => Layout::B5,
            // Symmetric: min = -2^(bits-1) * scale, so u - 2^(bits-1) is a signed value.
            (2..=8, 16 | 32)
                if scale
                    .iter()
                    .zip(min)
                    .all(|(&s, &m)| m == -((1u32 << (bits - 1)) as f32) * s) =>
            {
                Layout::B8
            }
            _ => return unsupported("no block layout holds these (offsets are not symmetric)"),
        };
        let per_row = cols / BLOCK;
        let bytes = layout.block_bytes();
        let mut data = vec![0u8; rows.next_multiple_of(QUAD) * per_row * bytes];
        let mut block = [0u8; 36];
        for b in 0..elements / BLOCK {
            let u = &u[b * BLOCK..(b + 1) * BLOCK];
            let g = b * BLOCK / group;
            let out = &mut block[..bytes];
            match layout {
                Layout::B4 | Layout::B5 => {
                    out[0..2].copy_from_slice(&f16::from_f32(scale[g]).to_le_bytes());
                    out[2..4].copy_from_slice(&f16::from_f32(min[g]).to_le_bytes());
                    let qs = if layout == Layout::B5 {
                        let high = (0..BLOCK).fold(0u32, |h, j| h | (u32::from(u[j] >> 4) << j));
                        out[4..8].copy_from_slice(&high.to_le_bytes());
                        &mut out[8..24]
                    } else {
                        &mut out[4..20]
                    };
                    for (j, q) in qs.iter_mut().enumerate() {
                        *q = (u[j] & 0x0F) | ((u[j + 16] & 0x0F) << 4);
                    }
                }
                Layout::B8 => {
                    let halves = BLOCK / group;
                    let (d0, d1) = (scale[g], scale[g + halves - 1]);
                    out[0..2].copy_from_slice(&f16::from_f32(d0).to_le_bytes());
                    out[2..4].copy_from_slice(&f16::from_f32(d1).to_le_bytes());
                    let zero = 1i16 << (bits - 1);
                    for (q, &u) in out[4..].iter_mut().zip(u) {
                        *q = (i16::from(u) - zero) as i8 as u8;
                    }
                }
            }
            let at = block_offset(b / per_row, b % per_row, per_row, bytes);
            data[at..at + bytes].copy_from_slice(out);
        }
        Ok(Self {
            layout,
            rows,
            cols,
            data,
        })
    }

    /// Appends `below`'s rows (a weight packed in parts of rows); an error when its layout
    /// or width differ, or when `self`'s rows are not whole quads ([`QUAD`]).
    /// `capacity_rows`: the rows the whole matrix will have, reserved once (growing by
    /// doubling would hold up to twice the weight for a moment).
    pub fn append_rows(
        &mut self,
        below: &QuantMatrix,
        capacity_rows: usize,
    ) -> Result<(), Unsupported> {
        if (below.layout, below.cols) != (self.layout, self.cols) {
            return Err(Unsupported(format!(
                "rows packed as {:?} x {} cannot follow {:?} x {}",
                below.layout, below.cols, self.layout, self.cols
            )));
        }
        if !self.rows.is_multiple_of(QUAD) {
            return Err(Unsupported(format!(
                "rows can follow whole quads of {QUAD} rows only, not {}",
                self.rows
            )));
        }
        let row_bytes = self.data.len() / self.rows;
        let want = capacity_rows
            .max(self.rows + below.rows)
            .next_multiple_of(QUAD)
            * row_bytes;
        self.data
            .reserve_exact(want.saturating_sub(self.data.len()));
        self.data.extend_from_slice(&below.data);
        self.rows += below.rows;
        Ok(())
    }

    /// The matrices one below the other (q, k and v as one product), when they share a
    /// layout and a width, and all but the last are whole quads of rows.
    pub fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|m| (m.layout, m.cols) != (first.layout, first.cols))
            || parts[..parts.len() - 1]
                .iter()
                .any(|m| !m.rows.is_multiple_of(QUAD))
        {
            return None;
        }
        Some(QuantMatrix {
            layout: first.layout,
            rows: parts.iter().map(|m| m.rows).sum(),
            cols: first.cols,
            data: parts.iter().flat_map(|m| m.data.iter().copied()).collect(),
        })
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Blocks per row.
    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Row `r`'s first block and the step from one of its blocks to the next.
    fn row(&self, r: usize) -> (*const u8, usize) {
        let bytes = self.layout.block_bytes();
        debug_assert!(r < self.rows);
        // Every row's blocks lie inside `data` (the last quad is padded).
        let at = block_offset(r, 0, self.blocks(), bytes);
        (self.data[at..].as_ptr(), QUAD * bytes)
    }

    /// Row `r`'s blocks, in order.
    fn row_blocks(&self, r: usize) -> impl Iterator<Item = &[u8]> {
        let (blocks, bytes) = (self.blocks(), self.layout.block_bytes());
        (0..blocks).map(move |b| {
            let at = block_offset(r, b, blocks, bytes);
            &self.data[at..at + bytes]
        })
    }

    /// Row `r`'s values (an embedding lookup). `out` holds `cols` values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (block, out) in self.row_blocks(r).zip(out.chunks_exact_mut(BLOCK)) {
            let (d, m) = (half(block, 0), half(block, 2));
            match self.layout {
                Layout::B4 => {
                    for j in 0..16 {
                        let q = block[4 + j];
                        out[j] = d * f32::from(q & 0x0F) + m;
                        out[j + 16] = d * f32::from(q >> 4) + m;
                    }
                }
                Layout::B5 => {
                    let high = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                    for j in 0..16 {
                        let q = block[8 + j];
                        let h = |k: usize| (((high >> k) & 1) << 4) as u8;
                        out[j] = d * f32::from((q & 0x0F) | h(j)) + m;
                        out[j + 16] = d * f32::from((q >> 4) | h(j + 16)) + m;
                    }
                }
                Layout::B8 => {
                    for (j, &q) in block[4..].iter().enumerate() {
                        out[j] = if j < 16 { d } else { m } * f32::from(q as i8);
                    }
                }
            }
        }
    }

    /// `out[i][r] = sum_k x[i][k] * w[r][k]` for `x: [n, cols]`, `out: [n, rows]`, on the
    /// best instruction set ([`Isa::detect`]), split over the threads of [`Pool::global`].
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_on(Isa::detect(), x, n, out);
    }

    /// [`QuantMatrix::matmul`] on `isa` (which the CPU must run: see [`Isa::available`];
    /// one it does not run falls back to the scalar path).
    pub fn matmul_on(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_with(isa, Inputs::from_env(), x, n, out);
    }

    /// [`QuantMatrix::matmul_on`] with the inputs taken as `inputs` says.
    pub fn matmul_with(&self, isa: Isa, inputs: Inputs, x: &[f32], n: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "x must be [n, cols]");
        assert_eq!(out.len(), n * self.rows, "out must be [n, rows]");
        let isa = if isa.runs_here() { isa } else { Isa::Scalar };
        if inputs == Inputs::F32 {
            return self.matmul_f32(isa, x, n, out);
        }
        let mut xq = Activations::quantize(x, n, self.cols);
        if self.takes_paired(isa, n) {
            xq = xq.pair();
        }
        let out = Shared(out.as_mut_ptr());
        self.by_rows(&|rows| {
            // SAFETY: the chunks of rows are disjoint, and a chunk writes only its rows'
            // outputs; `out` holds `n * self.rows` values (asserted above).
            unsafe { self.tiles(isa, &xq, n, rows, &out) }
        });
    }

    /// `out[j][r]` for the rows `rows` and every input `j`, by tiles of rows x inputs.
    ///
    /// # Safety
    /// `out` points to `[n, self.rows]` values that no other thread writes in `rows`.
    unsafe fn tiles(
        &self,
        isa: Isa,
        xq: &Activations,
        n: usize,
        rows: std::ops::Range<usize>,
        out: &Shared,
    ) {
        // Register budget: AVX2 has 16 vector registers (a 2 x 4 tile's accumulators, rows
        // and inputs fit), AVX-512 32. One input (decoding): 4 rows share its blocks.
        match (isa, n) {
            (Isa::Scalar, _) => self.tiles_of::<1, 1>(isa, xq, n, rows, out),
            (_, 1..=3) => self.tiles_of::<4, 1>(isa, xq, n, rows, out),
            // Many inputs on B4/B5 rows: 2 rows x 8 inputs, each row's blocks unpacked once
            // for the 8 (change 46).
            _ if xq.paired.is_some() => self.tiles_of::<2, 8>(isa, xq, n, rows, out),
            (Isa::Avx2, _) => self.tiles_of::<2, 4>(isa, xq, n, rows, out),
            (Isa::Avx512Vnni | Isa::Avx512, _) => self.tiles_of::<4, 4>(isa, xq, n, rows, out),
        }
    }

    /// [`QuantMatrix::tiles`] by `R x C` tiles; the rows and inputs left over by single
    /// rows and inputs.
    unsafe fn tiles_of<const R: usize, const C: usize>(
        &self,
        isa: Isa,
        xq: &Activations,
        n: usize,
        rows: std::ops::Range<usize>,
        out: &Shared,
    ) {
        let whole = rows.start + (rows.len() / R) * R;
        for r in (rows.start..whole).step_by(R) {
            self.tile_row::<R, C>(isa, xq, n, r, out);
        }
        for r in whole..rows.end {
            self.tile_row::<1, C>(isa, xq, n, r, out);
        }
    }

    /// Rows `r..r + R` with every input, `C` inputs at a time.
    unsafe fn tile_row<const R: usize, const C: usize>(
        &self,
        isa: Isa,
        xq: &Activations,
        n: usize,
        r: usize,
        out: &Shared,
    ) {
        // B4 and B5 on 512-bit registers add the offsets in a loop of their own, from each
        // row's offsets as f32, converted once here for every input of these rows
        // (`x86::tile_b45_zmm`).
        // (Left uninitialized: zeroing 8 KiB per tile row cost a third of a decoded token.)
        let mut buffer = [std::mem::MaybeUninit::<f32>::uninit(); MINS];
        let blocks = self.blocks();
        let mins: &[f32] = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if self.layout != Layout::B8 && n > 1 && R * blocks <= MINS => {
                let w: [*const u8; R] = std::array::from_fn(|i| self.row(r + i).0);
                let values = buffer.as_mut_ptr().cast::<f32>();
                // SAFETY: `isa` runs here (`matmul_with`); the rows hold `blocks` B4 or B5
                // blocks `QUAD * block_bytes` apart; `buffer` holds `R * blocks` values, all
                // written by `mins` before they are read.
                unsafe {
                    x86::mins(&w, QUAD * self.layout.block_bytes(), blocks, values);
                    std::slice::from_raw_parts(values, R * blocks)
                }
            }
            _ => &[],
        };
        // Once per quad of rows (a tile of 2 rows would ask twice).
        if n > 1 && r.is_multiple_of(QUAD) {
            self.prefetch(r + PREFETCH_ROWS);
        }
        let whole = (n / C) * C;
        for j in (0..whole).step_by(C) {
            self.tile::<R, C>(isa, xq, r, j, mins, out);
        }
        for j in whole..n {
            self.tile::<R, 1>(isa, xq, r, j, mins, out);
        }
    }

    /// Asks the cache for the quad of rows holding row `r` (if any): a few inputs (the
    /// server's batched decode) spend too little time per quad for the hardware prefetcher
    /// alone to keep the weights' stream ahead of the arithmetic.
    #[inline(always)]
    fn prefetch(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        if r < self.rows {
            let bytes = self.layout.block_bytes();
            let start = block_offset(r - r % QUAD, 0, self.blocks(), bytes);
            let end = (start + self.blocks() * QUAD * bytes).min(self.data.len());
            for at in (start..end).step_by(64) {
                // SAFETY: `at` is inside `data`; a prefetch reads nothing into the program.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        self.data.as_ptr().add(at).cast(),
                    )
                };
            }
        }
    }

    /// Rows `r..r + R` dotted with inputs `j..j + C`, written to `out[j..][r..]`; `mins`:
    /// the rows' offsets as f32 where `tile_row` made them for the B4/B5 512-bit loop (else
    /// empty).
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        &self,
        isa: Isa,
        xq: &Activations,
        r: usize,
        j: usize,
        mins: &[f32],
        out: &Shared,
    ) {
        let w: [(*const u8, usize); R] = std::array::from_fn(|i| self.row(r + i));
        let ds: [&[[f32; 2]]; C] = std::array::from_fn(|i| xq.scales(j + i));
        let q: [&[i8]; C] = std::array::from_fn(|i| xq.values(j + i));
        let values: [[f32; C]; R] = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `matmul_with` passes only an ISA this CPU runs; the slices are whole
            // blocks of this layout (the lengths asserted in `matmul_with`).
            Isa::Avx512 if self.layout == Layout::B8 => {
                x86::tile_b8_zmm::<R, C>(w.map(|(p, _)| p), w[0].1, ds, q)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; `mins` holds `R` rows of `blocks` offsets (`tile_row`), and
            // the paired inputs hold each input's block pairs (`Activations::pair`).
            Isa::Avx512 if !mins.is_empty() && C > 1 && xq.paired.is_some() => {
                let blocks = self.blocks();
                let mins: [&[f32]; R] =
                    std::array::from_fn(|i| &mins[i * blocks..(i + 1) * blocks]);
                let paired = xq.paired(j, C).unwrap_or_default();
                x86::tile_b45_zmm_paired::<R, C>(
                    self.layout,
                    w.map(|(p, _)| p),
                    w[0].1,
                    (ds, q),
                    paired,
                    mins,
                )
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; `mins` holds `R` rows of `blocks` offsets (`tile_row`).
            Isa::Avx512 if !mins.is_empty() => {
                let blocks = self.blocks();
                let mins: [&[f32]; R] =
                    std::array::from_fn(|i| &mins[i * blocks..(i + 1) * blocks]);
                x86::tile_b45_zmm::<R, C>(self.layout, w.map(|(p, _)| p), w[0].1, ds, q, mins)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 => x86::tile::<R, C>(
                isa != Isa::Avx2,
                self.layout,
                w.map(|(p, _)| p),
                w[0].1,
                ds,
                q,
            ),
            _ => std::array::from_fn(|a| {
                std::array::from_fn(|b| {
                    scalar_dot(self.layout, self.row_blocks(r + a), ds[b], q[b])
                })
            }),
        };
        for (a, row) in values.iter().enumerate() {
            for (b, &v) in row.iter().enumerate() {
                out.write((j + b) * self.rows + r + a, v);
            }
        }
    }

    /// The product with f32 inputs: one row and one input at a time.
    fn matmul_f32(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        let blocks = self.cols / BLOCK;
        let out = Shared(out.as_mut_ptr());
        self.by_rows(&|rows| {
            for r in rows {
                let (w, step) = self.row(r);
                for j in 0..n {
                    let xs = &x[j * self.cols..(j + 1) * self.cols];
                    let sums = &sums[j * blocks..(j + 1) * blocks];
                    let v = match isa {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as in `tile`.
                        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 => unsafe {
                            x86::dot_f32(self.layout, w, step, xs, sums)
                        },
                        _ => scalar_dot_f32(self.layout, self.row_blocks(r), xs, sums),
                    };
                    // SAFETY: as in `matmul_with`.
                    unsafe { out.write(j * self.rows + r, v) };
                }
            }
        });
    }

    /// Whether a product of `n` inputs on `isa` takes the 2 x 8 tiles on paired inputs
    /// (change 46): B4 and B5 rows of at least one block pair on AVX-512, 8 to 16 inputs (a
    /// server's batched decode step; two rows stream every input's paired values, which for
    /// a prefill's hundreds of inputs leave L1: 4 x 4 tiles read fewer), and room for a tile
    /// row's offsets (`tile_row`'s `MINS`).
    fn takes_paired(&self, isa: Isa, n: usize) -> bool {
        isa == Isa::Avx512
            && paired_tiles().load(Ordering::Relaxed)
            && self.layout != Layout::B8
            && (8..=PAIRED_INPUTS).contains(&n)
            && self.blocks() >= 2
            && 2 * self.blocks() <= MINS
    }

    /// Runs `fill` over chunks of the rows, claimed by the pool's threads in turn; each
    /// chunk's weights are read once for all the inputs (they stay in cache while the inputs
    /// stream past). Chunks are whole 4-row tiles but the last.
    fn by_rows(&self, fill: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let pool = Pool::global();
        let chunk = self
            .rows
            .div_ceil(pool.threads() * 8)
            .max(16)
            .next_multiple_of(4);
        pool.run(self.rows.div_ceil(chunk), &|c| {
            fill(c * chunk..((c + 1) * chunk).min(self.rows));
        });
    }
}

/// An output buffer the pool's threads write in disjoint places.
struct Shared(*mut f32);

// SAFETY: the writers write disjoint rows of the output (see `QuantMatrix::by_rows`).
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `at` is inside the buffer and no other thread writes it.
    #[inline(always)]
    unsafe fn write(&self, at: usize, v: f32) {
        *self.0.add(at) = v;
    }
}

/// Inputs quantized per block of 32: `x ~ d * q`, with each block's exact sum.
struct Activations {
    /// `[d, sum]` per block, side by side (one load in the kernels).
    ds: Vec<[f32; 2]>,
    q: Vec<i8>,
    cols: usize,
    /// The same inputs in the order of the B4/B5 512-bit tiles, for products of many
    /// inputs ([`Activations::pair`]).
    paired: Option<Paired>,
}

/// Quantized inputs laid out for `x86::tile_b45_zmm_paired` (change 46), block pair by
/// block pair (an odd last block is left out): the 64 values of blocks `b, b + 1` as the
/// 16-value runs `[lo(b), lo(b + 1), hi(b), hi(b + 1)]` (lo: values 0..16 of a block, hi:
/// 16..32), and their scales as 16 lanes `[d_b; 4], [d_b1; 4], [d_b; 4], [d_b1; 4]`, the
/// order of the unpacked nibbles and of their sums. A 4 x 4 tile shuffles and permutes these
/// per tile; laid out once per product, they are read straight from memory.
struct Paired {
    q: Vec<i8>,
    d: Vec<f32>,
}

impl Activations {
    /// Input `j`'s block scales and sums.
    fn scales(&self, j: usize) -> &[[f32; 2]] {
        let blocks = self.cols / BLOCK;
        &self.ds[j * blocks..(j + 1) * blocks]
    }

    /// Input `j`'s quantized values.
    fn values(&self, j: usize) -> &[i8] {
        &self.q[j * self.cols..(j + 1) * self.cols]
    }

    /// Inputs `j..j + n`'s values and scales in the pair order, where
    /// [`Activations::pair`] made them.
    fn paired(&self, j: usize, n: usize) -> Option<(&[i8], &[f32])> {
        let pairs = self.cols / BLOCK / 2;
        self.paired.as_ref().map(|p| {
            (
                &p.q[j * pairs * 2 * BLOCK..(j + n) * pairs * 2 * BLOCK],
                &p.d[j * pairs * 16..(j + n) * pairs * 16],
            )
        })
    }

    /// Adds the pair order ([`Paired`]) of every input.
    fn pair(mut self) -> Self {
        let blocks = self.cols / BLOCK;
        let (pairs, n) = (blocks / 2, self.ds.len() / blocks.max(1));
        let mut q = vec![0i8; n * pairs * 2 * BLOCK];
        let mut d = vec![0f32; n * pairs * 16];
        let half = BLOCK / 2;
        for j in 0..n {
            for p in 0..pairs {
                let (b, at) = (j * blocks + 2 * p, (j * pairs + p) * 2 * BLOCK);
                let src = &self.q[b * BLOCK..(b + 2) * BLOCK];
                let dst = &mut q[at..at + 2 * BLOCK];
                // [lo(b), hi(b), lo(b + 1), hi(b + 1)] -> [lo(b), lo(b + 1), hi(b), hi(b + 1)]
                for (k, from) in [0, 2, 1, 3].into_iter().enumerate() {
                    dst[k * half..(k + 1) * half]
                        .copy_from_slice(&src[from * half..(from + 1) * half]);
                }
                let (d0, d1) = (self.ds[b][0], self.ds[b + 1][0]);
                let lanes = &mut d[(j * pairs + p) * 16..(j * pairs + p + 1) * 16];
                for (l, v) in lanes.iter_mut().enumerate() {
                    *v = if (l / 4) % 2 == 0 { d0 } else { d1 };
                }
            }
        }
        self.paired = Some(Paired { q, d });
        self
    }

    fn quantize(x: &[f32], n: usize, cols: usize) -> Self {
        Self::quantize_on(Isa::detect(), x, n, cols)
    }

    /// Each block of 32 as `d = max|x| / 127` and `round(x / d)` (ties away from zero), with
    /// its exact sum: on AVX2 where `isa` has it (the scalar path's `round` is a library
    /// call on baseline x86-64: 5 % of a prefill), the same values either way (tested).
    ///
    /// A prefill's inputs are split over the pool's threads in pieces of at least
    /// [`QUANTIZE_PIECE`] values (on the calling thread alone, the 120 quantizations of a
    /// SmolLM2 pp512 were ~8 % of its two-thread time, change 29).
    fn quantize_on(isa: Isa, x: &[f32], n: usize, cols: usize) -> Self {
        let blocks = n * cols / BLOCK;
        let mut ds = vec![[0f32; 2]; blocks];
        let mut q = vec![0i8; n * cols];
        let fill = |x: &[f32], ds: &mut [[f32; 2]], q: &mut [i8]| {
            for ((block, ds), q) in x
                .chunks_exact(BLOCK)
                .zip(ds.iter_mut())
                .zip(q.chunks_exact_mut(BLOCK))
            {
                *ds = match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `isa` runs here (callers pass `Isa::detect()` or an available
                    // one); the block and `q` hold 32 values.
                    Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 if isa.runs_here() => unsafe {
                        x86::quantize_block(block.as_ptr(), q.as_mut_ptr())
                    },
                    _ => quantize_block(block, q),
                };
            }
        };
        let piece = QUANTIZE_PIECE.next_multiple_of(BLOCK);
        if x.len() < 2 * piece {
            fill(x, &mut ds, &mut q);
        } else {
            /// A piece of the inputs, its scales and its values.
            type Piece<'a> = std::sync::Mutex<(&'a [f32], &'a mut [[f32; 2]], &'a mut [i8])>;
            let parts: Vec<Piece<'_>> = x
                .chunks(piece)
                .zip(ds.chunks_mut(piece / BLOCK))
                .zip(q.chunks_mut(piece))
                .map(|((x, ds), q)| std::sync::Mutex::new((x, ds, q)))
                .collect();
            Pool::global().run(parts.len(), &|c| {
                let mut part = parts[c].lock().unwrap_or_else(|e| e.into_inner());
                let (x, ds, q) = &mut *part;
                fill(x, ds, q);
            });
        }
        Self {
            ds,
            q,
            cols,
            paired: None,
        }
    }
}

/// One block's [`Activations`] (`[d, sum]`, the values into `q`), portably.
fn quantize_block(block: &[f32], q: &mut [i8]) -> [f32; 2] {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(block) {
        *q = round_to_i8(v * inv);
    }
    [d, block.iter().sum()]
}

/// `v` (at most 127 in magnitude) rounded half away from zero: adding just under a half
/// with `v`'s sign, then truncating (what the AVX2 path does lane by lane).
fn round_to_i8(v: f32) -> i8 {
    (v + 0.499_999_97_f32.copysign(v)) as i32 as i8
}

/// Where block `b` of row `r` starts, for rows of `blocks` blocks of `bytes` each.
fn block_offset(r: usize, b: usize, blocks: usize, bytes: usize) -> usize {
    (((r / QUAD) * blocks + b) * QUAD + r % QUAD) * bytes
}

fn half(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The portable dot product of one weight row with one f32 input.
fn scalar_dot_f32<'a>(
    layout: Layout,
    w: impl Iterator<Item = &'a [u8]>,
    x: &[f32],
    sums: &[f32],
) -> f32 {
    let mut values = [0f32; BLOCK];
    let mut acc = 0f32;
    for (b, block) in w.enumerate() {
        let x = &x[b * BLOCK..(b + 1) * BLOCK];
        let (d, m) = (half(block, 0), half(block, 2));
        match layout {
            Layout::B4 | Layout::B5 => {
                let (high, qs) = match layout {
                    Layout::B5 => (
                        u32::from_le_bytes([block[4], block[5], block[6], block[7]]),
                        &block[8..24],
                    ),
                    _ => (0, &block[4..20]),
                };
                for j in 0..16 {
                    let h = |k: usize| (((high >> k) & 1) << 4) as u8;
                    values[j] = f32::from((qs[j] & 0x0F) | h(j));
                    values[j + 16] = f32::from((qs[j] >> 4) | h(j + 16));
                }
                let dot: f32 = values.iter().zip(x).map(|(u, x)| u * x).sum();
                acc += d * dot + m * sums[b];
            }
            Layout::B8 => {
                let dot = |range: std::ops::Range<usize>| -> f32 {
                    range.map(|j| f32::from(block[4 + j] as i8) * x[j]).sum()
                };
                acc += d * dot(0..16) + m * dot(16..32);
            }
        }
    }
    acc
}

/// The portable dot product of one weight row with one quantized input.
fn scalar_dot<'a>(
    layout: Layout,
    w: impl Iterator<Item = &'a [u8]>,
    ds: &[[f32; 2]],
    q: &[i8],
) -> f32 {
    let mut acc = 0f32;
    for (b, block) in w.enumerate() {
        let q = &q[b * BLOCK..(b + 1) * BLOCK];
        let [dx, sum] = ds[b];
        let (dw, m) = (half(block, 0), half(block, 2));
        let x = |j: usize| i32::from(q[j]);
        match layout {
            Layout::B4 | Layout::B5 => {
                let (high, qs) = match layout {
                    Layout::B5 => (
                        u32::from_le_bytes([block[4], block[5], block[6], block[7]]),
                        &block[8..24],
                    ),
                    _ => (0, &block[4..20]),
                };
                let h = |k: usize| (((high >> k) & 1) << 4) as i32;
                let dot: i32 = (0..16)
                    .map(|j| {
                        let (lo, hi) = (i32::from(qs[j] & 0x0F), i32::from(qs[j] >> 4));
                        (lo | h(j)) * x(j) + (hi | h(j + 16)) * x(j + 16)
                    })
                    .sum();
                acc += dw * dx * dot as f32 + m * sum;
            }
            Layout::B8 => {
                let half_dot = |range: std::ops::Range<usize>| -> i32 {
                    range.map(|j| i32::from(block[4 + j] as i8) * x(j)).sum()
                };
                acc += dx * (dw * half_dot(0..16) as f32 + m * half_dot(16..32) as f32);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random groups of `bits` with f16-exact scales; symmetric offsets when `symmetric`.
    fn groups(
        rng: &mut rand::rngs::StdRng,
        bits: u32,
        group: usize,
        elements: usize,
        symmetric: bool,
    ) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let u = (0..elements)
            .map(|_| rng.random_range(0..1u32 << bits) as u8)
            .collect();
        let scale: Vec<f32> = (0..elements / group)
            .map(|_| f16::from_f32(rng.random_range(-0.05..0.05)).to_f32())
            .collect();
        let min = scale
            .iter()
            .map(|&s| {
                if symmetric {
                    -((1u32 << (bits - 1)) as f32) * s
                } else {
                    f16::from_f32(rng.random_range(-0.5..0.5)).to_f32()
                }
            })
            .collect();
        (u, scale, min)
    }

    fn cases() -> Vec<(u32, usize, bool, Layout)> {
        vec![
            (4, 32, false, Layout::B4),
            (5, 32, false, Layout::B5),
            (8, 32, true, Layout::B8),
            (6, 16, true, Layout::B8),
            (3, 16, true, Layout::B8),
        ]
    }

    #[test]
    fn rows_dequantize_to_the_group_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (rows, cols) = (3, 96);
        for (bits, group, symmetric, layout) in cases() {
            let (u, scale, min) = groups(&mut rng, bits, group, rows * cols, symmetric);
            let g = Groups {
                bits,
                group,
                u: &u,
                scale: &scale,
                min: &min,
            };
            let m = QuantMatrix::new(g, rows, cols).unwrap();
            assert_eq!(m.layout(), layout);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut row);
                for (k, &v) in row.iter().enumerate() {
                    let i = r * cols + k;
                    let want = scale[i / group] * f32::from(u[i]) + min[i / group];
                    assert!(
                        (v - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{layout:?} {i}: {v} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn stacked_rows_are_the_parts_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (u, scale, min) = groups(&mut rng, 4, 32, 7 * 64, false);
        let g = Groups {
            bits: 4,
            group: 32,
            u: &u,
            scale: &scale,
            min: &min,
        };
        let part = |rows: std::ops::Range<usize>, cols: usize| {
            let (a, b) = (rows.start * cols, rows.end * cols);
            let groups = Groups {
                u: &u[a..b],
                scale: &scale[a / 32..b / 32],
                min: &min[a / 32..b / 32],
                ..g
            };
            QuantMatrix::new(groups, rows.len(), cols).unwrap()
        };
        let whole = QuantMatrix::new(g, 7, 64).unwrap();
        // A whole quad of rows, then three (padded to a quad).
        let stacked = QuantMatrix::stack(&[&part(0..4, 64), &part(4..7, 64)]).unwrap();
        assert_eq!(stacked.rows(), 7);
        assert_eq!(stacked.data, whole.data);
        let mut appended = part(0..4, 64);
        appended.append_rows(&part(4..7, 64), 7).unwrap();
        assert_eq!(appended.data, whole.data);
        // Rows after a part that ends inside a quad would land in its padding: refused.
        assert!(QuantMatrix::stack(&[&part(0..2, 64), &part(2..7, 64)]).is_none());
        assert!(part(0..2, 64).append_rows(&part(2..7, 64), 7).is_err());
        // Different widths.
        assert!(QuantMatrix::stack(&[&part(0..4, 64), &part(0..2, 32)]).is_none());
    }

    /// Every ISA quantizes the activations to the same integers and scales as the portable
    /// path (sums to f32 rounding), ties and zero blocks included.
    /// A prefill's inputs, quantized in pieces over the pool's threads, equal each input
    /// quantized alone (on the calling thread): 40 x 1024 values, two whole pieces and a
    /// partial one.
    #[test]
    fn activations_quantize_alike_in_pieces() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let (n, cols) = (40, 1024);
        assert!(n * cols > 2 * QUANTIZE_PIECE && (n * cols) % QUANTIZE_PIECE != 0);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-3.0..3.0)).collect();
        for isa in Isa::available() {
            let all = Activations::quantize_on(isa, &x, n, cols);
            for j in 0..n {
                let one = Activations::quantize_on(isa, &x[j * cols..(j + 1) * cols], 1, cols);
                assert_eq!(all.values(j), one.values(0), "{isa:?} input {j}");
                assert_eq!(all.scales(j), one.scales(0), "{isa:?} input {j}");
            }
        }
    }

    #[test]
    fn activations_quantize_alike_on_every_isa() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..8 * 64).map(|_| rng.random_range(-3.0..3.0)).collect();
        // A block whose step is 1 (its largest magnitude 127) and whose other values are
        // halves (ties), and an all-zero block.
        for (j, v) in x[64..96].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) + 0.5;
        }
        x[64] = -127.0;
        x[96..128].fill(0.0);
        let scalar = Activations::quantize_on(Isa::Scalar, &x, 8, 64);
        // Ties away from zero, as f32::round.
        assert_eq!(scalar.ds[2][0], 1.0);
        for (j, &q) in scalar.q[64..96].iter().enumerate() {
            assert_eq!(q as f32, x[64 + j].round(), "tie {j}");
        }
        assert!(scalar.q[96..128].iter().all(|&q| q == 0));
        for isa in Isa::available() {
            let a = Activations::quantize_on(isa, &x, 8, 64);
            assert_eq!(a.q, scalar.q, "{isa:?}");
            for (a, b) in a.ds.iter().zip(&scalar.ds) {
                assert_eq!(a[0], b[0], "{isa:?} scale");
                assert!(
                    (a[1] - b[1]).abs() <= 1e-5 * b[1].abs().max(1.0),
                    "{isa:?} sum"
                );
            }
        }
    }

    #[test]
    fn asymmetric_groups_of_16_are_refused() {
        let u = vec![0u8; 32];
        let g = Groups {
            bits: 2,
            group: 16,
            u: &u,
            scale: &[1.0, 1.0],
            min: &[0.5, 0.5],
        };
        assert!(QuantMatrix::new(g, 1, 32).is_err());
        let g = Groups {
            bits: 4,
            group: 32,
            u: &u,
            scale: &[1.0],
            min: &[0.5],
        };
        assert!(QuantMatrix::new(g, 1, 30 + 2).is_ok());
        assert!(QuantMatrix::new(Groups { u: &u[..30], ..g }, 1, 30).is_err());
    }

    /// Every ISA's product equals the f32 product of the dequantized weight within the
    /// activations' 8-bit quantization, and the ISAs agree with each other closely.
    #[test]
    fn products_match_the_dequantized_weight_on_every_isa() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // 9 blocks: an odd one after the pairs; 35: the 512-bit loops' offsets in two
        // chunks of 16 blocks and a third, partial one. 8 inputs and more: the 2 x 8 tiles
        // on paired inputs (B4/B5 on AVX-512), with 3 inputs and an odd row left over.
        for (rows, cols, n) in [
            (37, 288, 6),
            (9, 35 * BLOCK, 5),
            (37, 288, 11),
            (9, 35 * BLOCK, 8),
        ] {
            products_match_on_every_isa(&mut rng, rows, cols, n);
        }
    }

    fn products_match_on_every_isa(
        rng: &mut rand::rngs::StdRng,
        rows: usize,
        cols: usize,
        n: usize,
    ) {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
        for (bits, group, symmetric, layout) in cases() {
            let (u, scale, min) = groups(rng, bits, group, rows * cols, symmetric);
            let g = Groups {
                bits,
                group,
                u: &u,
                scale: &scale,
                min: &min,
            };
            let m = QuantMatrix::new(g, rows, cols).unwrap();
            let mut w = vec![0f32; rows * cols];
            for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                m.dequantize_row(r, row);
            }
            let mut scalar = vec![0f32; n * rows];
            m.matmul_with(Isa::Scalar, Inputs::Q8, &x, n, &mut scalar);
            for j in 0..n {
                for r in 0..rows {
                    let xs = &x[j * cols..(j + 1) * cols];
                    let exact: f32 = xs.iter().zip(&w[r * cols..]).map(|(a, b)| a * b).sum();
                    // |error| <= sum |w| * (d_x / 2) per block; d_x = max|x| / 127 <= 2 / 127.
                    let bound: f32 = w[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|v| v.abs())
                        .sum::<f32>()
                        / 127.0
                        + 1e-4;
                    let got = scalar[j * rows + r];
                    assert!(
                        (got - exact).abs() <= bound,
                        "{layout:?} [{j},{r}]: {got} vs {exact} (bound {bound})"
                    );
                }
            }
            for isa in Isa::available() {
                // f32 inputs: the exact product, up to f32 rounding.
                let mut exact_out = vec![0f32; n * rows];
                m.matmul_with(isa, Inputs::F32, &x, n, &mut exact_out);
                for j in 0..n {
                    for r in 0..rows {
                        let xs = &x[j * cols..(j + 1) * cols];
                        let exact: f32 = xs.iter().zip(&w[r * cols..]).map(|(a, b)| a * b).sum();
                        let got = exact_out[j * rows + r];
                        assert!(
                            (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                            "{layout:?} {isa:?} f32 inputs [{j},{r}]: {got} vs {exact}"
                        );
                    }
                }
                let mut out = vec![0f32; n * rows];
                m.matmul_with(isa, Inputs::Q8, &x, n, &mut out);
                for (a, b) in out.iter().zip(&scalar) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{layout:?} {isa:?}: {a} vs {b}"
                    );
                }
                // One input at a time gives the same rows (up to the order of the f32 sums:
                // four inputs at once accumulate each in one register, one input in two).
                for j in [1, n - 1] {
                    let mut one = vec![0f32; rows];
                    m.matmul_with(isa, Inputs::Q8, &x[j * cols..(j + 1) * cols], 1, &mut one);
                    for (a, b) in one.iter().zip(&out[j * rows..(j + 1) * rows]) {
                        assert!(
                            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                            "{layout:?} {isa:?}: n = 1"
                        );
                    }
                }
            }
        }
    }
}
