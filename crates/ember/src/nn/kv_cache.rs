//! The key/value cache, allocated once for the whole context and written in place.

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::Result;
use crate::graph::DeviceGraphs;

/// Keys and values of every layer for positions `0..len`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer: keys and values, each `[batch, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    len: usize,
    capacity: usize,
    window: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache for `capacity` positions, stored as `dtype`.
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        let shape = [batch, kv_heads, capacity, head_dim];
        Self {
            layers: (0..layers)
                .map(|_| {
                    (
                        Tensor::zeros(shape, (device, dtype)),
                        Tensor::zeros(shape, (device, dtype)),
                    )
                })
                .collect(),
            len: 0,
            capacity,
            window: DECODE_WINDOW,
        }
    }

    /// Sets the granularity of the decode window (1: exact lengths); see [`decode_window`].
    pub fn with_decode_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets everything (the memory stays allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Writes `k`, `v` (`[batch, kv_heads, seq, head_dim]`) of layer `layer` at positions
    /// `len..len + seq` and returns keys and values for `0..visible`, where `visible` is at
    /// least `len + seq` (positions past that hold zeros or stale entries, which the caller
    /// masks; see [`decode_window`]).
    ///
    /// The caller checks the capacity first and calls [`KvCache::advance`] after the last layer.
    pub fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        visible: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, heads, seq, dim] = k.dims();
        let end = self.len + seq;
        debug_assert!(end <= visible && visible <= self.capacity);
        let range = [0..batch, 0..heads, self.len..end, 0..dim];
        // Take the cache tensors out of their slot (the new k/v hold it meanwhile) so that
        // each is uniquely owned when written, which lets burn write in place; with a second
        // handle (`slot.clone().slice_assign(..)`) it may have to copy the whole cache.
        // Measured on flex: +3 % decode at a 4096-position context (docs/performance.md).
        let slot = &mut self.layers[layer];
        let (kc, vc) = std::mem::replace(slot, (k.clone(), v.clone()));
        let kc = kc.slice_assign(range.clone(), k);
        let vc = vc.slice_assign(range, v);
        let upto = [0..batch, 0..heads, 0..visible, 0..dim];
        let out = (kc.clone().slice(upto.clone()), vc.clone().slice(upto));
        *slot = (kc, vc);
        out
    }

    /// Writes one position's `k`, `v` (`[batch, kv_heads, 1, head_dim]`) of layer `layer` at
    /// the position held on the device in `pos: [1]` and returns keys and values for
    /// `0..window`. Nothing here reads a host position, so the step can be replayed as a
    /// graph (see [`crate::graph`]).
    ///
    /// With `graphs`, the cache is written in place (it keeps its device memory, which a
    /// replay needs); without, by a masked select over the whole cache (the portable
    /// reference). The caller calls [`KvCache::advance`] after the last layer.
    pub fn write_at(
        &mut self,
        layer: usize,
        pos: &Tensor<B, 1, Int>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        window: usize,
        graphs: Option<&dyn DeviceGraphs<B>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let slot = &mut self.layers[layer];
        match graphs {
            Some(g) => {
                g.index_copy(&slot.0, 2, pos, &k)?;
                g.index_copy(&slot.1, 2, pos, &v)?;
            }
            None => {
                let [batch, heads, capacity, dim] = slot.0.dims();
                let shape = [batch, heads, capacity, dim];
                let at = Tensor::<B, 1, Int>::arange(0..capacity as i64, &pos.device())
                    .equal(pos.clone().expand([capacity]))
                    .reshape([1, 1, capacity, 1])
                    .expand(shape);
                let (kc, vc) = std::mem::replace(slot, (k.clone(), v.clone()));
                *slot = (
                    kc.mask_where(at.clone(), k.expand(shape)),
                    vc.mask_where(at, v.expand(shape)),
                );
            }
        }
        let [batch, heads, _, dim] = slot.0.dims();
        let upto = [0..batch, 0..heads, 0..window, 0..dim];
        Ok((
            slot.0.clone().slice(upto.clone()),
            slot.1.clone().slice(upto),
        ))
    }

    /// Device addresses of every layer's keys and values (see [`DeviceGraphs::address`]).
    pub fn addresses(&self, graphs: &dyn DeviceGraphs<B>) -> Vec<usize> {
        self.layers
            .iter()
            .flat_map(|(k, v)| [graphs.address(k), graphs.address(v)])
            .collect()
    }

    /// How many cached positions a decode step attends to when `end` are filled: `end`
    /// rounded up to a multiple of the cache's window (default [`DECODE_WINDOW`]), at most
    /// the capacity. See [`decode_window`].
    pub fn decode_window(&self, end: usize) -> usize {
        decode_window(end, self.window, self.capacity)
    }

    /// Records that `seq` more positions were written to every layer.
    pub fn advance(&mut self, seq: usize) {
        self.len += seq;
    }
}

/// Default granularity of the cached length a decode step attends to (`[model]
/// decode_window`).
pub const DECODE_WINDOW: usize = 256;

/// The number of cached positions a decode step attends to when `end` are filled: `end`
/// rounded up to a multiple of `window`, at most `capacity`; the positions past `end` are
/// hidden by an additive `-inf` bias.
///
/// Why: attention's shapes then change every 256 tokens instead of every token. CubeCL
/// (cuda, wgpu) keys its autotune and compiled kernels on shapes and strides, so with the
/// exact length every new token length was a new key (measured on an H100: a 1-layer f16
/// model compiled and tuned anew for most of its first 32 decode steps; see
/// docs/performance.md). The extra masked positions cost at most 255 positions of attention.
pub fn decode_window(end: usize, window: usize, capacity: usize) -> usize {
    let window = window.max(1);
    end.div_ceil(window)
        .saturating_mul(window)
        .min(capacity)
        .max(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_window_rounds_up_within_capacity() {
        assert_eq!(decode_window(1, 256, 4096), 256);
        assert_eq!(decode_window(256, 256, 4096), 256);
        assert_eq!(decode_window(257, 256, 4096), 512);
        assert_eq!(decode_window(300, 256, 320), 320);
        assert_eq!(decode_window(40, 256, 64), 64);
        assert_eq!(decode_window(64, 256, 64), 64);
        assert_eq!(decode_window(37, 1, 64), 37);
        assert_eq!(decode_window(37, 0, 64), 37);
    }
}
