//! Recording the decode step once and replaying it (CUDA graphs), for backends that can.
//!
//! A decode step on a GPU is hundreds of small kernels, each launched by the host through
//! burn's op dispatch; at batch 1 the host's launch work, not the GPU, sets the speed
//! (docs/performance.md). A backend that can record a stream of kernels and replay it with
//! one call (libtorch's `at::cuda::CUDAGraph`) implements [`DeviceGraphs`], and its backend
//! crate hands it to the engine in [`Capabilities::graphs`]; where `backend.graphs` is set and
//! the device supports it, a [`Session`](crate::Session) then runs the model's one forward pass
//! with the token and the position held on the device ([`KvCache::next_at`]), so that the
//! step's shapes and device addresses do not change from one token to the next, and
//! replays it.
//!
//! [`KvCache::next_at`]: crate::nn::kv_cache::KvCache::next_at
//! [`Capabilities::graphs`]: crate::backend::Capabilities::graphs
//!
//! What a replay needs that eager code does not:
//! - inputs in fixed device buffers, written in place ([`DeviceGraphs::write_ints`]);
//! - the keys and values written in place at a position held on the device
//!   ([`DeviceGraphs::index_copy`]), so that the cache keeps its addresses;
//! - no host work inside the step (the sampled token is read after the replay).

use burn::prelude::*;

use crate::error::Result;

/// A recorded step, replayed on the stream it was recorded on.
pub trait Graph: Send {
    /// Runs the recorded kernels again.
    fn replay(&self) -> Result<()>;
}

/// Work that must be undone when a [`GraphStream::enter`] scope ends (restoring the stream).
pub trait Scope {}

/// A stream of one session's own, on which its steps run, are recorded and are replayed.
/// Each session has its own, so that sessions on other threads neither wait for it nor
/// land in its recordings.
pub trait GraphStream: Send {
    /// Sends the calling thread's device work to this stream until the scope is dropped
    /// (recording needs a stream other than the default one; eager warm-up and replays run
    /// there too, after the work queued before).
    fn enter(&self) -> Result<Box<dyn Scope>>;
    /// Starts recording the work this thread sends to this stream (inside `enter`); work of
    /// other threads is not recorded and not affected.
    fn begin(&mut self) -> Result<()>;
    /// Stops recording and returns the graph.
    fn end(&mut self) -> Result<Box<dyn Graph>>;
}

/// What a backend provides for graph replay of the decode step on its type `B`.
pub trait DeviceGraphs<B: Backend>: Send + Sync {
    /// Whether `device` can record and replay graphs.
    fn supports(&self, device: &B::Device) -> bool;
    /// A new stream for one session on `device`.
    fn stream(&self, device: &B::Device) -> Result<Box<dyn GraphStream>>;
    /// Writes `values` into the device buffer `dst` in place.
    fn write_ints(&self, dst: &Tensor<B, 1, Int>, values: &[i64]) -> Result<()>;
    /// `dst[.., index[i], ..] = src[.., i, ..]` along `dim`, in place: `dst` keeps its memory.
    fn index_copy(
        &self,
        dst: &Tensor<B, 4>,
        dim: usize,
        index: &Tensor<B, 1, Int>,
        src: &Tensor<B, 4>,
    ) -> Result<()>;
    /// Where `t`'s data lives on the device (a replay is valid only while these stay put).
    fn address(&self, t: &Tensor<B, 4>) -> usize;
}
