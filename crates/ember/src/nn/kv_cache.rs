//! The key/value cache, allocated once for the whole context and written in place. It
//! decides what a forward step sees: the step's positions (known on the host, or held on the
//! device for a step recorded once and replayed), the cached keys and values a layer attends
//! to ([`KvCache::update_and_fetch`]) and the mask that hides the rest ([`Step::bias`]).
//! A model has one forward pass for both kinds of position.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::graph::DeviceGraphs;
use crate::nn::attention::position_bias;
use crate::nn::rope::{Rope, RopeTables};
use crate::nn::{FusedOps, RopeWritten};

/// Keys and values of every layer for positions `0..len`.
///
/// The memory is allocated at the first step: for the whole capacity, or (with
/// [`KvCache::with_block`]) for as many positions as the steps need, rounded up to the block,
/// growing by whole blocks as the sequence does (a server's many sequences then hold memory
/// for what they use, not for the whole context each).
#[derive(Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer: keys and values, each `[batch, kv_heads, allocated, head_dim]`; empty
    /// before the first step.
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Layers, and `[batch, kv_heads, head_dim]` of each one's keys and values.
    shape: (usize, [usize; 3]),
    device: B::Device,
    dtype: DType,
    /// Positions the memory grows by (0: the whole capacity at once).
    block: usize,
    len: usize,
    capacity: usize,
    window: usize,
    /// The next step's position, when it is held on the device ([`KvCache::next_at`]).
    device_step: Option<DeviceStep<B>>,
    /// The backend's fused ops, for writing positions in place
    /// ([`crate::nn::FusedOps::write_positions`]).
    fused: Option<crate::nn::Fused<B>>,
    /// The next step's rows, in a cache whose batch rows are slots of separate sequences
    /// ([`KvCache::next_row`], [`KvCache::next_rows`]).
    rows_step: Option<RowsStep>,
}

/// A step on a slotted cache, set before [`KvCache::begin`].
#[derive(Clone, Debug)]
enum RowsStep {
    Row { row: usize, start: usize },
    Rows { positions: Vec<usize> },
}

#[derive(Clone)]
struct DeviceStep<B: Backend> {
    pos: Tensor<B, 1, Int>,
    window: usize,
    graphs: Option<Arc<dyn DeviceGraphs<B>>>,
}

impl<B: Backend> std::fmt::Debug for KvCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("layers", &self.shape.0)
            .field("allocated", &self.allocated())
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("window", &self.window)
            .finish()
    }
}

/// Where one forward step's positions are.
#[derive(Clone)]
enum Positions<B: Backend> {
    /// `start..start + seq`, known on the host.
    Host { start: usize },
    /// One position held on the device in `pos: [1]`; written in place with `graphs`.
    Device {
        pos: Tensor<B, 1, Int>,
        graphs: Option<Arc<dyn DeviceGraphs<B>>>,
    },
    /// Row `row` of a slotted cache, positions `start..start + seq`.
    Row { row: usize, start: usize },
    /// Rows `0..n` of a slotted cache, one token each, row `i` at `positions[i]`.
    Rows { positions: Vec<usize> },
}

/// One forward step as the cache hands it out ([`KvCache::begin`]): which positions its
/// `seq` tokens are at, and how many cached positions its layers attend to (`visible`: at
/// least the last new position + 1; past it, padding that [`Step::bias`] hides).
#[derive(Clone)]
pub struct Step<B: Backend> {
    positions: Positions<B>,
    seq: usize,
    visible: usize,
}

impl<B: Backend> Step<B> {
    /// New tokens in this step.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Cached positions the layers attend to (keys and values from [`KvCache::update_and_fetch`]).
    pub fn visible(&self) -> usize {
        self.visible
    }

    /// The rotary tables of this step's positions, `[1, 1, seq, head_dim]`.
    pub fn rope(&self, rope: &Rope<B>) -> RopeTables<B> {
        match &self.positions {
            Positions::Host { start } | Positions::Row { start, .. } => {
                rope.tables(*start, self.seq)
            }
            Positions::Device { pos, .. } => rope.tables_at(pos.clone()),
            Positions::Rows { positions } => rope.tables_rows(positions),
        }
    }

    /// The cached positions a single new token at a host position attends to: up to and
    /// including its own, and with `sliding = Some(w)` only the last `w` of them (the rule
    /// of [`Step::bias`]). `None` for a step of several tokens, of several slots' rows, or at
    /// a device position.
    pub fn decode_keys(&self, sliding: Option<usize>) -> Option<std::ops::Range<usize>> {
        match self.positions {
            Positions::Host { start } | Positions::Row { start, .. } if self.seq == 1 => {
                let end = start + 1;
                Some(sliding.map_or(0, |w| end.saturating_sub(w))..end)
            }
            _ => None,
        }
    }

    /// Whether this step is a whole prompt from position 0 that no sliding window cuts: its
    /// causal mask is the square one attention ops can apply themselves (`is_causal`).
    pub fn is_square_causal(&self, sliding: Option<usize>) -> bool {
        matches!(
            self.positions,
            Positions::Host { start: 0 } | Positions::Row { start: 0, .. }
        ) && self.visible == self.seq
            && sliding.is_none_or(|w| w >= self.seq)
    }

    /// The additive bias `[1, 1, seq, visible]` (`[rows, 1, 1, visible]` for a step of
    /// several slots' rows) of this step: 0 where a query sees a key,
    /// `-inf` for keys after it (and the padding past the last position), and with
    /// `sliding = Some(w)` for keys `w` or more positions behind it.
    pub fn bias(&self, sliding: Option<usize>, dtype: DType, device: &B::Device) -> Tensor<B, 4> {
        match &self.positions {
            Positions::Host { start } | Positions::Row { start, .. } => {
                position_bias::<B>(*start, self.seq, self.visible, sliding, dtype, device)
            }
            Positions::Rows { positions } => {
                // Built on the host: one row of 0 / -inf per sequence.
                let visible = self.visible;
                let mut bias = vec![0f32; positions.len() * visible];
                for (row, &p) in bias.chunks_exact_mut(visible).zip(positions) {
                    for (k, b) in row.iter_mut().enumerate() {
                        let hidden = k > p || sliding.is_some_and(|w| p - k.min(p) >= w);
                        if hidden {
                            *b = f32::NEG_INFINITY;
                        }
                    }
                }
                let data = burn::tensor::TensorData::new(bias, [positions.len(), 1, 1, visible]);
                Tensor::from_data(data, (device, dtype))
            }
            Positions::Device { pos, .. } => {
                // Key index minus the query's position, from device values only.
                let ahead = Tensor::<B, 1, Int>::arange(0..self.visible as i64, device)
                    .sub(pos.clone().expand([self.visible]));
                let mut bias = Tensor::<B, 1>::zeros([self.visible], (device, dtype))
                    .mask_fill(ahead.clone().greater_elem(0), f32::NEG_INFINITY);
                if let Some(w) = sliding {
                    bias = bias.mask_fill(ahead.lower_equal_elem(-(w as i64)), f32::NEG_INFINITY);
                }
                bias.reshape([1, 1, 1, self.visible])
            }
        }
    }
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
        Self {
            layers: Vec::new(),
            shape: (layers, [batch, kv_heads, head_dim]),
            device: device.clone(),
            dtype,
            block: 0,
            rows_step: None,
            len: 0,
            capacity,
            window: DECODE_WINDOW,
            device_step: None,
            fused: None,
        }
    }

    /// Writes new positions with the backend's fused ops where they can
    /// ([`crate::nn::FusedOps::write_positions`]).
    pub fn with_fused(mut self, fused: Option<crate::nn::Fused<B>>) -> Self {
        self.fused = fused;
        self
    }

    /// Sets the granularity of the decode window (1: exact lengths); see [`decode_window`].
    pub fn with_decode_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// The device the cache lives on.
    pub fn device(&self) -> B::Device {
        self.device.clone()
    }

    /// Allocates memory in blocks of `block` positions as the sequence grows, instead of
    /// the whole capacity at the first step (0: the whole capacity). Only before the first
    /// step.
    pub fn with_block(mut self, block: usize) -> Self {
        if self.layers.is_empty() {
            self.block = block;
        }
        self
    }

    /// Sequences the cache holds side by side (its batch rows).
    pub fn slots(&self) -> usize {
        self.shape.1[0]
    }

    /// Makes the next step ([`KvCache::begin`]) run its tokens in row `row` only, at
    /// positions `start..start + seq`: a cache whose rows are slots of separate sequences
    /// (a server's batch), each at its own length, which the caller keeps ([`KvCache::len`]
    /// does not count these steps).
    pub fn next_row(&mut self, row: usize, start: usize) {
        self.rows_step = Some(RowsStep::Row { row, start });
    }

    /// Makes the next step one token for each of rows `0..positions.len()`, row `i`'s at
    /// `positions[i]`, each attending to its own positions only (a decode step of a
    /// server's batch; see [`KvCache::next_row`]).
    pub fn next_rows(&mut self, positions: Vec<usize>) {
        self.rows_step = Some(RowsStep::Rows { positions });
    }

    /// Copies positions `0..len` of row `from` into row `to`, in every layer: a prompt's
    /// prefix whose keys and values another slot already holds (a server's shared system
    /// prompt), so that its prefill starts after them. The copy goes through host memory
    /// (a prefix, not the cache), then into the row in place where the backend writes rows
    /// in place. An error names rows or a length the cache does not hold.
    pub fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let (slots, allocated) = (self.slots(), self.allocated());
        if from >= slots || to >= slots || len > allocated {
            return Err(Error::Backend(format!(
                "KV cache prefix copy of {len} positions from row {from} to row {to}: the \
                 cache has {slots} rows and {allocated} positions"
            )));
        }
        if from == to || len == 0 {
            return Ok(());
        }
        let [_, heads, dim] = self.shape.1;
        let (device, dtype, fused) = (self.device.clone(), self.dtype, self.fused.clone());
        let copy = |t: &Tensor<B, 4>| {
            let data = t
                .clone()
                .slice([from..from + 1, 0..heads, 0..len, 0..dim])
                .into_data();
            Tensor::<B, 4>::from_data(data, (&device, dtype))
        };
        for slot in &mut self.layers {
            let (k_prefix, v_prefix) = (copy(&slot.0), copy(&slot.1));
            let (k, v) = std::mem::replace(slot, (k_prefix.clone(), v_prefix.clone()));
            *slot = (
                write_rows(&fused, k, &[(to, 0)], k_prefix),
                write_rows(&fused, v, &[(to, 0)], v_prefix),
            );
        }
        Ok(())
    }

    /// Positions the memory holds now (0 before the first step).
    pub fn allocated(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Makes the memory hold at least `positions` positions (at most the capacity; with
    /// no block, the whole capacity), as a step that needs them does.
    pub fn reserve(&mut self, positions: usize) {
        let have = self.allocated();
        if have >= positions {
            return;
        }
        let target = if self.block == 0 {
            self.capacity
        } else {
            positions
                .div_ceil(self.block)
                .saturating_mul(self.block)
                .min(self.capacity)
                .max(positions)
        };
        let (layers, [batch, heads, dim]) = self.shape;
        let more = [batch, heads, target - have, dim];
        let zeros = || Tensor::<B, 4>::zeros(more, (&self.device, self.dtype));
        if self.layers.is_empty() {
            self.layers = (0..layers).map(|_| (zeros(), zeros())).collect();
        } else {
            for slot in &mut self.layers {
                let (k, v) = std::mem::replace(slot, (zeros(), zeros()));
                *slot = (
                    Tensor::cat(vec![k, zeros()], 2),
                    Tensor::cat(vec![v, zeros()], 2),
                );
            }
        }
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

    /// Makes the next step ([`KvCache::begin`]) one token at the position held on the device
    /// in `pos: [1]`, attending to the first `window` positions (at least position + 1), so
    /// that no host value depends on the position and a backend can record the step once and
    /// replay it ([`crate::graph`]). With `graphs`, keys and values are written in place (the
    /// cache keeps its device memory, which a replay needs); without, by a masked select over
    /// the whole cache (the portable reference). The caller checks the capacity and calls
    /// [`KvCache::advance`] after the step.
    pub fn next_at(
        &mut self,
        pos: Tensor<B, 1, Int>,
        window: usize,
        graphs: Option<Arc<dyn DeviceGraphs<B>>>,
    ) {
        self.device_step = Some(DeviceStep {
            pos,
            window: window.min(self.capacity),
            graphs,
        });
    }

    /// Starts a forward step of `seq` new tokens: at the device position of
    /// [`KvCache::next_at`] if one was set, else at positions `len..len + seq` (an error when
    /// they do not fit). A single host token attends to the cache rounded up to the decode
    /// window ([`decode_window`]); a longer step to exactly its last position.
    pub fn begin(&mut self, seq: usize) -> Result<Step<B>> {
        if let Some(rows) = self.rows_step.take() {
            return self.begin_rows(rows, seq);
        }
        if let Some(DeviceStep {
            pos,
            window,
            graphs,
        }) = self.device_step.take()
        {
            if seq != 1 {
                return Err(Error::Backend(format!(
                    "a step at a device position runs one token, not {seq}"
                )));
            }
            self.reserve(window);
            return Ok(Step {
                positions: Positions::Device { pos, graphs },
                seq,
                visible: window,
            });
        }
        let end = self.len + seq;
        if end > self.capacity {
            return Err(Error::ContextOverflow {
                prompt: end,
                context: self.capacity,
                max_new_tokens: 0,
            });
        }
        let visible = if seq == 1 {
            self.decode_window(end)
        } else {
            end
        };
        self.reserve(visible);
        Ok(Step {
            positions: Positions::Host { start: self.len },
            seq,
            visible,
        })
    }

    fn begin_rows(&mut self, rows: RowsStep, seq: usize) -> Result<Step<B>> {
        let slots = self.slots();
        let overflow = |end: usize| Error::ContextOverflow {
            prompt: end,
            context: self.capacity,
            max_new_tokens: 0,
        };
        let (positions, visible) = match rows {
            RowsStep::Row { row, start } => {
                if row >= slots {
                    return Err(Error::Backend(format!(
                        "row {row} of a cache of {slots} slots"
                    )));
                }
                if start + seq > self.capacity {
                    return Err(overflow(start + seq));
                }
                let visible = if seq == 1 {
                    self.decode_window(start + 1)
                } else {
                    start + seq
                };
                (Positions::Row { row, start }, visible)
            }
            RowsStep::Rows { positions } => {
                if seq != 1 || positions.is_empty() || positions.len() > slots {
                    return Err(Error::Backend(format!(
                        "a step of {} rows of one token each in a cache of {slots} slots runs \
                         {seq} tokens per row",
                        positions.len()
                    )));
                }
                let end = positions.iter().max().map_or(0, |p| p + 1);
                if end > self.capacity {
                    return Err(overflow(end));
                }
                (Positions::Rows { positions }, self.decode_window(end))
            }
        };
        self.reserve(visible);
        Ok(Step {
            positions,
            seq,
            visible,
        })
    }

    /// Writes layer `layer`'s new keys and values (`[batch, kv_heads, seq, head_dim]`) at the
    /// step's positions and returns the keys and values the step attends to, `[batch,
    /// kv_heads, visible, head_dim]` (positions past the step's last hold zeros or stale
    /// entries, which [`Step::bias`] hides).
    pub fn update_and_fetch(
        &mut self,
        step: &Step<B>,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let slot = &mut self.layers[layer];
        let [batch, heads, seq, dim] = k.dims();
        match &step.positions {
            Positions::Host { start } => {
                let range = [0..batch, 0..heads, *start..start + seq, 0..dim];
                // Take the cache tensors out of their slot (the new k/v hold it meanwhile) so
                // that each is uniquely owned when written, which lets burn write in place;
                // with a second handle (`slot.clone().slice_assign(..)`) it may have to copy
                // the whole cache. Measured on flex: +3 % decode at a 4096-position context
                // (docs/performance.md).
                let (kc, vc) = std::mem::replace(slot, (k.clone(), v.clone()));
                let write = |dst: Tensor<B, 4>, src: Tensor<B, 4>| {
                    let dst = match &self.fused {
                        Some(f) => f.ops().write_positions(dst, *start, &src),
                        None => Err(dst),
                    };
                    dst.unwrap_or_else(|dst| dst.slice_assign(range.clone(), src))
                };
                *slot = (write(kc, k), write(vc, v));
            }
            Positions::Device {
                pos,
                graphs: Some(g),
            } => {
                g.index_copy(&slot.0, 2, pos, &k)?;
                g.index_copy(&slot.1, 2, pos, &v)?;
            }
            Positions::Row { row, start } => {
                let rows = [(*row, *start)];
                let (kc, vc) = std::mem::replace(slot, (k.clone(), v.clone()));
                *slot = (
                    write_rows(&self.fused, kc, &rows, k),
                    write_rows(&self.fused, vc, &rows, v),
                );
            }
            Positions::Rows { positions } => {
                let rows: Vec<(usize, usize)> = positions.iter().copied().enumerate().collect();
                let (kc, vc) = std::mem::replace(slot, (k.clone(), v.clone()));
                *slot = (
                    write_rows(&self.fused, kc, &rows, k),
                    write_rows(&self.fused, vc, &rows, v),
                );
            }
            Positions::Device { pos, graphs: None } => {
                let [_, _, capacity, _] = slot.0.dims();
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
        Ok(self.fetch(step, layer, batch))
    }

    /// The keys and values layer `layer`'s step attends to, `[batch, kv_heads, visible,
    /// head_dim]` (views of the cache).
    fn fetch(&self, step: &Step<B>, layer: usize, batch: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let slot = &self.layers[layer];
        let [_, heads, _, dim] = slot.0.dims();
        let batch_rows = match &step.positions {
            Positions::Row { row, .. } => *row..row + 1,
            _ => 0..batch,
        };
        let upto = [batch_rows, 0..heads, 0..step.visible, 0..dim];
        (
            slot.0.clone().slice(upto.clone()),
            slot.1.clone().slice(upto),
        )
    }

    /// Rotates layer `layer`'s new queries and keys by `rope` and writes the keys and values
    /// at the step's positions in one op of the backend ([`crate::nn::FusedOps::rope_write`]):
    /// the rotated `q` (`[batch, heads, seq, head_dim]`) and the keys and values the step
    /// attends to, as [`KvCache::update_and_fetch`] returns them. `q: [batch, heads, seq,
    /// head_dim]`, `k, v: [batch, kv_heads, seq, head_dim]`, not rotated. `None` where the
    /// backend has no such op, or declines it, or the step's position is on the device; the
    /// cache is then untouched and the caller rotates and calls
    /// [`KvCache::update_and_fetch`].
    #[allow(clippy::type_complexity)]
    pub fn rope_write(
        &mut self,
        step: &Step<B>,
        layer: usize,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        rope: &RopeTables<B>,
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        let placeholder = (k.clone(), v.clone());
        self.rope_write_with(step, layer, k.dims()[0], placeholder, |ops, cache, rows| {
            ops.rope_write(q, k, v, rope.cos(), rope.sin(), cache, rows)
        })
    }

    /// [`KvCache::rope_write`] of the projection `qkv: [batch, seq, (heads + 2 kv_heads) *
    /// head_dim]` before it is split into heads ([`FusedOps::rope_write_packed`]); `None`
    /// as there, the cache untouched.
    pub fn rope_write_packed(
        &mut self,
        step: &Step<B>,
        layer: usize,
        qkv: &Tensor<B, 3>,
        heads: usize,
        rope: &RopeTables<B>,
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        let placeholder = Self::stand_in(rope);
        self.rope_write_with(
            step,
            layer,
            qkv.dims()[0],
            placeholder,
            |ops, cache, rows| {
                ops.rope_write_packed(qkv, heads, rope.cos(), rope.sin(), cache, rows)
            },
        )
    }

    /// [`KvCache::write_with`] of a RoPE-write op (`write`), then the rows' cached keys and
    /// values: the rotated queries and what they attend to.
    #[allow(clippy::type_complexity)]
    fn rope_write_with(
        &mut self,
        step: &Step<B>,
        layer: usize,
        batch: usize,
        placeholder: (Tensor<B, 4>, Tensor<B, 4>),
        write: impl FnOnce(
            &dyn FusedOps<B>,
            (Tensor<B, 4>, Tensor<B, 4>),
            &[(usize, usize)],
        ) -> std::result::Result<RopeWritten<B>, (Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        let q = self.write_with(step, layer, batch, placeholder, |ops, cache, rows| {
            write(ops, cache, rows).map(|w| (w.q, (w.keys, w.values)))
        })?;
        let (k, v) = self.fetch(step, layer, batch);
        Some((q, k, v))
    }

    /// A decode step's RoPE, cache write and attention of the projection `qkv: [batch, 1,
    /// (heads + 2 kv_heads) * head_dim]` as one op of the backend
    /// ([`FusedOps::rope_write_attend`]): the attention's output `[batch, 1, heads *
    /// head_dim]` over every cached position and the new one (no sliding window), or
    /// `None` (a prompt's step, rows at different positions, a backend without the op), the
    /// cache untouched.
    pub fn rope_write_attend(
        &mut self,
        step: &Step<B>,
        layer: usize,
        qkv: &Tensor<B, 3>,
        heads: usize,
        rope: &RopeTables<B>,
    ) -> Option<Tensor<B, 3>> {
        let keys = step.decode_keys(None)?;
        let batch = qkv.dims()[0];
        let placeholder = Self::stand_in(rope);
        self.write_with(step, layer, batch, placeholder, |ops, cache, rows| {
            ops.rope_write_attend(qkv, heads, rope.cos(), rope.sin(), cache, rows, keys)
        })
    }

    /// Stands in a layer's slot while an op holds its cache (never read): the rope tables'
    /// handles, cloned, so no op joins a lazy backend's stream.
    fn stand_in(rope: &RopeTables<B>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (rope.cos().clone(), rope.sin().clone())
    }

    /// The cache rows of a step of `batch` rows handed to `write` (the backend's op) with
    /// layer `layer`'s cache, which `placeholder` stands in for meanwhile; the written cache
    /// back in the slot and the op's other result returned, or `None` with the cache as it
    /// was.
    #[allow(clippy::type_complexity)]
    fn write_with<X>(
        &mut self,
        step: &Step<B>,
        layer: usize,
        batch: usize,
        placeholder: (Tensor<B, 4>, Tensor<B, 4>),
        write: impl FnOnce(
            &dyn FusedOps<B>,
            (Tensor<B, 4>, Tensor<B, 4>),
            &[(usize, usize)],
        ) -> std::result::Result<
            (X, (Tensor<B, 4>, Tensor<B, 4>)),
            (Tensor<B, 4>, Tensor<B, 4>),
        >,
    ) -> Option<X> {
        let fused = self.fused.clone()?;
        let rows: Vec<(usize, usize)> = match &step.positions {
            Positions::Host { start } => (0..batch).map(|b| (b, *start)).collect(),
            Positions::Row { row, start } => vec![(*row, *start)],
            Positions::Rows { positions } => positions.iter().copied().enumerate().collect(),
            Positions::Device { .. } => return None,
        };
        let slot = self.layers.get_mut(layer)?;
        // Taken out of the slot (the placeholder holds it meanwhile) so that the op owns the
        // only handle and can write in place (see `update_and_fetch`).
        let cache = std::mem::replace(slot, placeholder);
        match write(fused.ops(), cache, &rows) {
            Ok((x, written)) => {
                *slot = written;
                Some(x)
            }
            Err(cache) => {
                *slot = cache;
                None
            }
        }
    }

    /// Ends a step: its positions count as filled. A step at a device position leaves the
    /// count to the caller ([`KvCache::advance`]), which knows the position.
    pub fn finish(&mut self, step: &Step<B>) {
        if let Positions::Host { .. } = step.positions {
            self.len += step.seq;
        }
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

/// Writes `src: [rows, heads, seq, dim]` into `dst`'s rows at their positions (`rows[i]` =
/// (row, start) of `src[i]`): in place with the backend's fused op where it has one, else
/// with `slice_assign`, row by row.
fn write_rows<B: Backend>(
    fused: &Option<crate::nn::Fused<B>>,
    dst: Tensor<B, 4>,
    rows: &[(usize, usize)],
    src: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let dst = match fused {
        Some(f) => f.ops().write_rows(dst, rows, &src),
        None => Err(dst),
    };
    dst.unwrap_or_else(|mut dst| {
        let [_, heads, seq, dim] = src.dims();
        for (i, &(row, start)) in rows.iter().enumerate() {
            let range = [row..row + 1, 0..heads, start..start + seq, 0..dim];
            dst = dst.slice_assign(range, src.clone().narrow(0, i, 1));
        }
        dst
    })
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
