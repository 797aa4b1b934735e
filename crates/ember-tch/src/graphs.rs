//! CUDA graph replay of the decode step on libtorch (`cuda-graphs` feature): Ember's
//! [`DeviceGraphs`] over `at::cuda::CUDAGraph`, through the small C++ file beside this one
//! (tch 0.22 does not bind CUDA graphs).

use std::ffi::{c_char, c_int, c_void, CStr};

use burn::backend::libtorch::LibTorchDevice;
use burn::prelude::*;
use ember::graph::{DeviceGraphs, Graph, GraphStream, Scope};
use ember::{Error, Result};

use crate::Backend as Tch;

extern "C" {
    fn ember_cg_free_error(error: *mut c_char);
    fn ember_cg_stream_new(device: c_int, out: *mut *mut c_void) -> *mut c_char;
    fn ember_cg_stream_free(stream: *mut c_void);
    fn ember_cg_enter(stream: *mut c_void) -> *mut c_char;
    fn ember_cg_exit(stream: *mut c_void) -> *mut c_char;
    fn ember_cg_begin(out: *mut *mut c_void) -> *mut c_char;
    fn ember_cg_end(graph: *mut c_void) -> *mut c_char;
    fn ember_cg_replay(graph: *mut c_void) -> *mut c_char;
    fn ember_cg_free(graph: *mut c_void);
}

/// Turns a shim's returned message (null: success) into a result.
fn check(error: *mut c_char, what: &str) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from strdup, freed once here.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { ember_cg_free_error(error) };
    Err(Error::Backend(format!("CUDA graph {what}: {message}")))
}

/// A pointer the shim owns; used from one thread at a time (a session's).
struct Handle(*mut c_void);
// SAFETY: the objects behind the handles (a CUDA stream wrapper, a CUDA graph) may be used
// from any thread; Ember never uses one from two threads at once.
unsafe impl Send for Handle {}

/// libtorch's graph support (stateless: each session has its own [`TchStream`]).
#[derive(Debug, Default)]
pub struct TchGraphs;

/// A session's CUDA stream and the graph being recorded on it.
struct TchStream {
    stream: Handle,
    recording: Option<Handle>,
}

impl Drop for TchStream {
    fn drop(&mut self) {
        if let Some(Handle(graph)) = self.recording.take() {
            // SAFETY: created by ember_cg_begin, never ended; freed once.
            unsafe { ember_cg_free(graph) };
        }
        // SAFETY: created by ember_cg_stream_new, freed once (after its work is done).
        unsafe { ember_cg_stream_free(self.stream.0) };
    }
}

impl GraphStream for TchStream {
    fn enter(&self) -> Result<Box<dyn Scope>> {
        // SAFETY: a stream made by ember_cg_stream_new, alive while `self` is; the scope is
        // dropped before the session's stream (Replay's field order).
        check(unsafe { ember_cg_enter(self.stream.0) }, "stream enter")?;
        Ok(Box::new(StreamScope(self.stream.0)))
    }

    fn begin(&mut self) -> Result<()> {
        let mut out = std::ptr::null_mut();
        // SAFETY: writes a new graph to `out` on success.
        check(unsafe { ember_cg_begin(&mut out) }, "capture begin")?;
        self.recording = Some(Handle(out));
        Ok(())
    }

    fn end(&mut self) -> Result<Box<dyn Graph>> {
        let graph = TchGraph(
            self.recording
                .take()
                .ok_or_else(|| Error::Backend("CUDA graph capture end without a begin".into()))?,
        );
        // SAFETY: the graph ember_cg_begin made; freed by TchGraph's drop either way.
        check(unsafe { ember_cg_end(graph.0 .0) }, "capture end")?;
        Ok(Box::new(graph))
    }
}

struct StreamScope(*mut c_void);

impl Scope for StreamScope {}

impl Drop for StreamScope {
    fn drop(&mut self) {
        // SAFETY: the stream outlives the scope (see TchStream::enter).
        if let Err(e) = check(unsafe { ember_cg_exit(self.0) }, "stream exit") {
            tracing::warn!("{e}");
        }
    }
}

struct TchGraph(Handle);

impl Graph for TchGraph {
    fn replay(&self) -> Result<()> {
        // SAFETY: a graph that ember_cg_end instantiated.
        check(unsafe { ember_cg_replay(self.0 .0) }, "replay")
    }
}

impl Drop for TchGraph {
    fn drop(&mut self) {
        // SAFETY: created by ember_cg_begin, freed once.
        unsafe { ember_cg_free(self.0 .0) };
    }
}

fn float(t: &Tensor<Tch, 4>) -> tch::Tensor {
    t.clone().into_primitive().tensor().tensor.shallow_clone()
}

fn int(t: &Tensor<Tch, 1, Int>) -> tch::Tensor {
    t.clone().into_primitive().tensor.shallow_clone()
}

fn torch_error(what: &str) -> impl Fn(tch::TchError) -> Error + '_ {
    move |e| Error::Backend(format!("{what}: {e}"))
}

impl DeviceGraphs<Tch> for TchGraphs {
    fn supports(&self, device: &LibTorchDevice) -> bool {
        matches!(device, LibTorchDevice::Cuda(_))
    }

    fn stream(&self, device: &LibTorchDevice) -> Result<Box<dyn GraphStream>> {
        let LibTorchDevice::Cuda(index) = *device else {
            return Err(Error::Backend(format!(
                "CUDA graphs need a CUDA device, not {device:?}"
            )));
        };
        let ordinal = c_int::try_from(index)
            .map_err(|_| Error::Backend(format!("CUDA device {index} out of range")))?;
        let mut out = std::ptr::null_mut();
        // SAFETY: writes a new stream wrapper to `out` on success.
        check(unsafe { ember_cg_stream_new(ordinal, &mut out) }, "stream")?;
        Ok(Box::new(TchStream {
            stream: Handle(out),
            recording: None,
        }))
    }

    fn write_ints(&self, dst: &Tensor<Tch, 1, Int>, values: &[i64]) -> Result<()> {
        let src = tch::Tensor::from_slice(values);
        int(dst)
            .f_copy_(&src)
            .map_err(torch_error("writing a graph input"))
    }

    fn index_copy(
        &self,
        dst: &Tensor<Tch, 4>,
        dim: usize,
        index: &Tensor<Tch, 1, Int>,
        src: &Tensor<Tch, 4>,
    ) -> Result<()> {
        float(dst)
            .f_index_copy_(dim as i64, &int(index), &float(src))
            .map(|_| ())
            .map_err(torch_error("writing the KV cache in place"))
    }

    fn address(&self, t: &Tensor<Tch, 4>) -> usize {
        float(t).data_ptr() as usize
    }
}
