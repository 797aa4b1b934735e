// Recording libtorch's CUDA work once and replaying it (at::cuda::CUDAGraph), for ember-tch's
// `cuda-graphs` feature; src/graphs.rs is the Rust side. tch 0.22 does not bind CUDA graphs.
//
// C ABI. Every function that can fail returns null on success, or the C++ exception's message
// (malloc'd; the caller frees it with ember_cg_free_error): no exception crosses into Rust.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>

namespace {

// A session's own stream (capture needs a stream other than the default one, and one that no
// other session enqueues to: work enqueued to a capturing stream is recorded, whatever thread
// enqueues it; PyTorch's stream pool hands the same 32 streams round), with the guard that
// makes it current and an event to order it against the stream it replaces.
struct Stream {
  cudaStream_t raw;
  c10::cuda::CUDAStream stream;
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  cudaEvent_t event;
};

void cuda_check(cudaError_t status) {
  if (status != cudaSuccess) {
    throw std::runtime_error(cudaGetErrorString(status));
  }
}

// `waiter` runs what is queued after this point only once `before` has done what it queued.
void order(Stream* s, cudaStream_t before, cudaStream_t waiter) {
  cuda_check(cudaEventRecord(s->event, before));
  cuda_check(cudaStreamWaitEvent(waiter, s->event, 0));
}

char* error_of(const std::exception& e) { return strdup(e.what()); }

template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return error_of(e);
  } catch (...) {
    return strdup("unknown C++ exception");
  }
}

}  // namespace

extern "C" {

void ember_cg_free_error(char* error) { free(error); }

char* ember_cg_stream_new(int device, void** out) {
  return guarded([&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    c10::cuda::CUDAGuard device_guard(index);
    cudaStream_t raw;
    cuda_check(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking));
    cudaEvent_t event;
    cuda_check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    *out = new Stream{raw, c10::cuda::getStreamFromExternal(raw, index), std::nullopt, event};
  });
}

void ember_cg_stream_free(void* stream) {
  auto* s = static_cast<Stream*>(stream);
  cudaStreamSynchronize(s->raw);
  cudaEventDestroy(s->event);
  cudaStreamDestroy(s->raw);
  delete s;
}

// This thread's work goes to the side stream, after all that was queued on the current one.
char* ember_cg_enter(void* stream) {
  return guarded([&] {
    auto* s = static_cast<Stream*>(stream);
    auto current = c10::cuda::getCurrentCUDAStream(s->stream.device_index());
    order(s, current.stream(), s->stream.stream());
    s->guard.emplace(s->stream);
  });
}

// Back to the previous stream, which waits for what the side stream queued.
char* ember_cg_exit(void* stream) {
  return guarded([&] {
    auto* s = static_cast<Stream*>(stream);
    s->guard.reset();
    auto current = c10::cuda::getCurrentCUDAStream(s->stream.device_index());
    order(s, s->stream.stream(), current.stream());
  });
}

// Starts recording the current (session) stream into a new graph with a private memory pool.
// Thread-local capture mode: other threads' CUDA calls are not restricted meanwhile.
char* ember_cg_begin(void** out) {
  auto* graph = new at::cuda::CUDAGraph();
  char* error = guarded([&] { graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal); });
  if (error != nullptr) {
    delete graph;
  } else {
    *out = graph;
  }
  return error;
}

// Stops recording and instantiates the graph.
char* ember_cg_end(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->capture_end(); });
}

char* ember_cg_replay(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->replay(); });
}

void ember_cg_free(void* graph) { delete static_cast<at::cuda::CUDAGraph*>(graph); }

}  // extern "C"
