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
