//! Dequantization of ggml block formats to f32.
//!
//! Each routine follows `dequantize_row_*` in ggml-org/ggml `src/ggml-quants.c` and is
//! checked against the `gguf` Python package's dequantizer in the tests.

use half::{bf16, f16};

use super::gguf::GgmlType;

/// Dequantizes `elements` values of type `ty` from `bytes`.
///
/// Returns `None` for a type this module cannot decode. `bytes` must hold exactly the
/// tensor's blocks (the GGUF reader guarantees it).
pub fn dequantize(ty: GgmlType, bytes: &[u8], elements: usize) -> Option<Vec<f32>> {
    let mut out = Vec::with_capacity(elements);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| half_at(b, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = half_at(block, 0);
                out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let d = half_at(block, 0);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0F) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let d = half_at(block, 0);
                let m = half_at(block, 2);
                let qs = &block[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q5_0 => {
            for block in bytes.chunks_exact(22) {
                let d = half_at(block, 0);
                out.extend(q5_values(&block[2..6], &block[6..22]).map(|q| (q - 16.0) * d));
            }
        }
        GgmlType::Q5_1 => {
            for block in bytes.chunks_exact(24) {
                let d = half_at(block, 0);
                let m = half_at(block, 2);
                out.extend(q5_values(&block[4..8], &block[8..24]).map(|q| q * d + m));
            }
        }
        GgmlType::Q2_K => {
            for block in bytes.chunks_exact(84) {
                let (scales, qs) = (&block[..16], &block[16..80]);
                let d = half_at(block, 80);
                let dmin = half_at(block, 82);
                out.extend((0..256).map(|i| {
                    let sc = scales[i / 16];
                    let (dl, ml) = (d * f32::from(sc & 0x0F), dmin * f32::from(sc >> 4));
                    dl * f32::from(crumb(qs, i)) - ml
                }));
            }
        }
        GgmlType::Q3_K => {
            for block in bytes.chunks_exact(110) {
                let (hmask, qs, sc) = (&block[..32], &block[32..96], &block[96..108]);
                let d = half_at(block, 108);
                // 16 six-bit scales: low nibbles in bytes 0..8, high crumbs in bytes 8..12.
                let dl: [f32; 16] = std::array::from_fn(|s| {
                    let low = (sc[s % 8] >> (4 * (s / 8))) & 0x0F;
                    let high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
                    d * (f32::from(low | (high << 4)) - 32.0)
                });
                out.extend((0..256).map(|i| {
                    // A clear hmask bit subtracts 4.
                    let high = if (hmask[i % 32] >> (i / 32)) & 1 == 0 {
                        4.0
                    } else {
                        0.0
                    };
                    dl[i / 16] * (f32::from(crumb(qs, i)) - high)
                }));
            }
        }
        GgmlType::Q4_K => {
            for block in bytes.chunks_exact(144) {
                let d = half_at(block, 0);
                let dmin = half_at(block, 2);
                let scales = &block[4..16];
                let qs = &block[16..144];
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
                    out.extend(q.iter().map(|&x| d1 * f32::from(x & 0x0F) - m1));
                    out.extend(q.iter().map(|&x| d2 * f32::from(x >> 4) - m2));
                }
            }
        }
        GgmlType::Q5_K => {
            for block in bytes.chunks_exact(176) {
                let d = half_at(block, 0);
                let dmin = half_at(block, 2);
                let (scales, qh, qs) = (&block[4..16], &block[16..48], &block[48..176]);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, scales);
                    let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
                    out.extend((0..32).map(|l| {
                        let low = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
                        dj * f32::from(low | (((qh[l] >> j) & 1) << 4)) - mj
                    }));
                }
            }
        }
        GgmlType::Q6_K => {
            for block in bytes.chunks_exact(210) {
                let d = half_at(block, 208);
                let mut y = [0f32; 256];
                for half_block in 0..2 {
                    let ql = &block[64 * half_block..64 * half_block + 64];
                    let qh = &block[128 + 32 * half_block..128 + 32 * half_block + 32];
                    let sc = &block[192 + 8 * half_block..192 + 8 * half_block + 8];
                    let y = &mut y[128 * half_block..128 * half_block + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = i32::from((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32;
                        let q2 = i32::from((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        let s = |k: usize| d * f32::from(sc[is + k] as i8);
                        y[l] = s(0) * q1 as f32;
                        y[l + 32] = s(2) * q2 as f32;
                        y[l + 64] = s(4) * q3 as f32;
                        y[l + 96] = s(6) * q4 as f32;
                    }
                }
                out.extend_from_slice(&y);
            }
        }
        _ => return None,
    }
    (out.len() == elements).then_some(out)
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 32 five-bit values of a Q5_0/Q5_1 block: low nibbles from `qs` (first 16 values in
/// the low halves), fifth bits from the little-endian 32-bit `qh`.
fn q5_values<'a>(qh: &[u8], qs: &'a [u8]) -> impl Iterator<Item = f32> + 'a {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    (0..32).map(move |j| {
        let low = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        f32::from(low | ((((qh >> j) & 1) as u8) << 4))
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
