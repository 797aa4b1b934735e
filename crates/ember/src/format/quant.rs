//! ggml block formats: each quantized type decoded once into unsigned integers with one
//! scale and one offset per group ([`unpack`]: `value = scale * u + min`), from which both
//! the f32 values ([`dequantize`]) and the weights a layer keeps quantized on the device
//! ([`crate::nn::linear`](mod@crate::nn::linear)) are made.
//!
//! Each decoder follows `dequantize_row_*` in ggml-org/ggml `src/ggml-quants.c` and is
//! checked against the `gguf` Python package's dequantizer in the tests.

use half::{bf16, f16};

use super::gguf::GgmlType;

/// A quantized tensor's values as `scale[g] * u[i] + min[g]` for the group `g = i / group`
/// that value `i` falls in (row-major; a row holds whole groups).
#[derive(Debug, Clone, PartialEq)]
pub struct Unpacked {
    /// Bits of each `u` (every `u < 2^bits`).
    pub bits: u32,
    /// Values per group.
    pub group: usize,
    /// One unsigned integer per value.
    pub u: Vec<u8>,
    /// Per group.
    pub scale: Vec<f32>,
    /// Per group.
    pub min: Vec<f32>,
}

impl Unpacked {
    fn new(bits: u32, group: usize, elements: usize) -> Self {
        Self {
            bits,
            group,
            u: Vec::with_capacity(elements),
            scale: Vec::with_capacity(elements / group),
            min: Vec::with_capacity(elements / group),
        }
    }

    /// Appends one group: its scale, its offset, and its integers.
    fn push(&mut self, scale: f32, min: f32, u: impl IntoIterator<Item = u8>) {
        self.scale.push(scale);
        self.min.push(min);
        self.u.extend(u);
    }

    /// The f32 values.
    pub fn values(&self) -> Vec<f32> {
        self.u
            .chunks_exact(self.group)
            .zip(self.scale.iter().zip(&self.min))
            .flat_map(|(u, (&s, &m))| u.iter().map(move |&u| s * f32::from(u) + m))
            .collect()
    }

    /// A copy of rows `range` of a `[_, cols]` tensor.
    pub fn rows(&self, cols: usize, range: std::ops::Range<usize>) -> Unpacked {
        let groups = cols / self.group;
        Unpacked {
            bits: self.bits,
            group: self.group,
            u: self.u[range.start * cols..range.end * cols].to_vec(),
            scale: self.scale[range.start * groups..range.end * groups].to_vec(),
            min: self.min[range.start * groups..range.end * groups].to_vec(),
        }
    }

    /// Reorders whole rows of `cols` values: row `i` of the result is row `order[i]`.
    pub fn permute_rows(&mut self, cols: usize, order: &[usize]) {
        let groups = cols / self.group;
        let take = |v: &[f32]| -> Vec<f32> {
            order
                .iter()
                .flat_map(|&r| v[r * groups..(r + 1) * groups].iter().copied())
                .collect()
        };
        self.u = order
            .iter()
            .flat_map(|&r| self.u[r * cols..(r + 1) * cols].iter().copied())
            .collect();
        self.scale = take(&self.scale);
        self.min = take(&self.min);
    }
}

/// Dequantizes `elements` values of type `ty` from `bytes`.
///
/// Returns `None` for a type this module cannot decode. `bytes` must hold exactly the
/// tensor's blocks (the GGUF reader guarantees it).
pub fn dequantize(ty: GgmlType, bytes: &[u8], elements: usize) -> Option<Vec<f32>> {
    let out: Vec<f32> = match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(|b| half_at(b, 0)).collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => unpack(ty, bytes, elements)?.values(),
    };
    (out.len() == elements).then_some(out)
}

/// Whether [`unpack`] decodes `ty`.
pub fn unpackable(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// Decodes the blocks of a quantized type into integers, scales and offsets; `None` for a
/// float type or one this module cannot decode.
pub fn unpack(ty: GgmlType, bytes: &[u8], elements: usize) -> Option<Unpacked> {
    let out = match ty {
        GgmlType::Q8_0 => {
            let mut out = Unpacked::new(8, 32, elements);
            for block in bytes.chunks_exact(34) {
                let d = half_at(block, 0);
                // q (int8) * d = (q + 128) * d - 128 d
                let u = block[2..34].iter().map(|&q| (q as i8 as i16 + 128) as u8);
                out.push(d, -128.0 * d, u);
            }
            out
        }
        GgmlType::Q4_0 => {
            let mut out = Unpacked::new(4, 32, elements);
            for block in bytes.chunks_exact(18) {
                let d = half_at(block, 0);
                out.push(d, -8.0 * d, nibbles(&block[2..18]));
            }
            out
        }
        GgmlType::Q4_1 => {
            let mut out = Unpacked::new(4, 32, elements);
            for block in bytes.chunks_exact(20) {
                out.push(half_at(block, 0), half_at(block, 2), nibbles(&block[4..20]));
            }
            out
        }
        GgmlType::Q5_0 => {
            let mut out = Unpacked::new(5, 32, elements);
            for block in bytes.chunks_exact(22) {
                let d = half_at(block, 0);
                out.push(d, -16.0 * d, q5_values(&block[2..6], &block[6..22]));
            }
            out
        }
        GgmlType::Q5_1 => {
            let mut out = Unpacked::new(5, 32, elements);
            for block in bytes.chunks_exact(24) {
                let (d, m) = (half_at(block, 0), half_at(block, 2));
                out.push(d, m, q5_values(&block[4..8], &block[8..24]));
            }
            out
        }
        GgmlType::Q2_K => {
            let mut out = Unpacked::new(2, 16, elements);
            for block in bytes.chunks_exact(84) {
                let (scales, qs) = (&block[..16], &block[16..80]);
                let (d, dmin) = (half_at(block, 80), half_at(block, 82));
                for (g, &sc) in scales.iter().enumerate() {
                    let (dl, ml) = (d * f32::from(sc & 0x0F), dmin * f32::from(sc >> 4));
                    out.push(dl, -ml, (16 * g..16 * g + 16).map(|i| crumb(qs, i)));
                }
            }
            out
        }
        GgmlType::Q3_K => {
            let mut out = Unpacked::new(3, 16, elements);
            for block in bytes.chunks_exact(110) {
                let (hmask, qs, sc) = (&block[..32], &block[32..96], &block[96..108]);
                let d = half_at(block, 108);
                for g in 0..16 {
                    // 16 six-bit scales: low nibbles in bytes 0..8, high crumbs in 8..12.
                    let low = (sc[g % 8] >> (4 * (g / 8))) & 0x0F;
                    let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
                    let dl = d * (f32::from(low | (high << 4)) - 32.0);
                    // q - 4 when the hmask bit is clear: u = q + 4 * hmask bit, offset -4.
                    let u = (16 * g..16 * g + 16)
                        .map(|i| crumb(qs, i) + 4 * ((hmask[i % 32] >> (i / 32)) & 1));
                    out.push(dl, -4.0 * dl, u);
                }
            }
            out
        }
        GgmlType::Q4_K => {
            let mut out = Unpacked::new(4, 32, elements);
            for block in bytes.chunks_exact(144) {
                let (d, dmin) = (half_at(block, 0), half_at(block, 2));
                let (scales, qs) = (&block[4..16], &block[16..144]);
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    for (g, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
                        let (sc, m) = scale_min_k4(g, scales);
                        let u = q.iter().map(move |&x| (x >> shift) & 0x0F);
                        out.push(d * f32::from(sc), -dmin * f32::from(m), u);
                    }
                }
            }
            out
        }
        GgmlType::Q5_K => {
            let mut out = Unpacked::new(5, 32, elements);
            for block in bytes.chunks_exact(176) {
                let (d, dmin) = (half_at(block, 0), half_at(block, 2));
                let (scales, qh, qs) = (&block[4..16], &block[16..48], &block[48..176]);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, scales);
                    let u = (0..32).map(|l| {
                        let low = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
                        low | (((qh[l] >> j) & 1) << 4)
                    });
                    out.push(d * f32::from(sc), -dmin * f32::from(m), u);
                }
            }
            out
        }
        GgmlType::Q6_K => {
            let mut out = Unpacked::new(6, 16, elements);
            for block in bytes.chunks_exact(210) {
                let d = half_at(block, 208);
                for g in 0..16 {
                    // Groups of 16 in order; value i of the 256 sits in half `i / 128`, at
                    // `l = i % 32` of quarter `(i % 128) / 32`.
                    let dl = d * f32::from(block[192 + g] as i8);
                    let u = (16 * g..16 * g + 16).map(|i| {
                        let (half, quarter, l) = (i / 128, (i % 128) / 32, i % 32);
                        let ql = &block[64 * half..64 * half + 64];
                        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
                        let low = (ql[l + 32 * (quarter % 2)] >> (4 * (quarter / 2))) & 0x0F;
                        low | (((qh[l] >> (2 * quarter)) & 3) << 4)
                    });
                    out.push(dl, -32.0 * dl, u);
                }
            }
            out
        }
        _ => return None,
    };
    (out.u.len() == elements).then_some(out)
}

/// `values` (whole blocks of 32) as ggml blocks of `ty`, the way ggml's reference quantizer
/// makes them (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` in `src/ggml-quants.c`);
/// `None` for another type or a length that is not whole blocks. For synthetic models
/// (`preset:NAME,quant=q8_0`): [`unpack`] reads the blocks back as it reads a file's.
pub fn quantize_blocks(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    if !values.len().is_multiple_of(32) {
        return None;
    }
    let blocks = values.chunks_exact(32);
    match ty {
        GgmlType::Q8_0 => Some(
            blocks
                .flat_map(|x| {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let qs = x.iter().map(move |v| (v * id).round() as i8 as u8);
                    f16::from_f32(d).to_le_bytes().into_iter().chain(qs)
                })
                .collect(),
        ),
        GgmlType::Q4_0 => Some(
            blocks
                .flat_map(|x| {
                    // The value of largest magnitude, with its sign, maps to -8.
                    let max = x
                        .iter()
                        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let d = max / -8.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let q = move |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                    let qs = (0..16).map(move |j| q(x[j]) | (q(x[j + 16]) << 4));
                    f16::from_f32(d).to_le_bytes().into_iter().chain(qs)
                })
                .collect(),
        ),
        _ => None,
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 32 values of a 16-byte block of nibbles: low halves first, then high halves.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter()
        .map(|&q| q & 0x0F)
        .chain(qs.iter().map(|&q| q >> 4))
}

/// The 32 five-bit values of a Q5_0/Q5_1 block: low nibbles from `qs` (first 16 values in
/// the low halves), fifth bits from the little-endian 32-bit `qh`.
fn q5_values<'a>(qh: &[u8], qs: &'a [u8]) -> impl Iterator<Item = u8> + 'a {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    (0..32).map(move |j| {
        let low = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        low | ((((qh >> j) & 1) as u8) << 4)
    })
}

/// The 2-bit value `i` (of 256) in Q2_K/Q3_K `qs`: each 32 bytes hold 128 values, as four
/// 2-bit planes of 32.
fn crumb(qs: &[u8], i: usize) -> u8 {
    (qs[32 * (i / 128) + i % 32] >> (2 * (i / 32 % 4))) & 3
}

/// The 6-bit scale and min of sub-block `j` in a K-quant's packed 12-byte scales.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
