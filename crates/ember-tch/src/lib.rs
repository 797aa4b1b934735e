//! Ember on burn's libtorch backend: CPU always; CUDA and MPS when the libtorch it was built
//! against has them (the PyPI CPU libraries that `scripts/fetch-libtorch.sh` fetches do not
//! include CUDA; build against a CUDA libtorch for `cuda:N`, or on macOS for `mps`).
// Bad input (a file, a config, a user's text) must come back as an error, never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fused;
#[cfg(feature = "cuda-graphs")]
mod graphs;

use std::sync::Arc;

use burn::backend::libtorch::LibTorchDevice;
use burn::backend::LibTorch;
use ember::backend::{choose_dtype, DeviceSpec};
use ember::graph::DeviceGraphs;
use ember::nn::Fused;
use ember::{
    BackendConfig, BackendJob, Capabilities, DType, DeviceInfo, Error, Result, RuntimeInfo,
};

/// The name configs use for this backend.
pub const NAME: &str = "tch";

/// The concrete backend type. Its element parameter is only the default: Ember creates
/// every tensor in the engine's dtype, and libtorch computes in that dtype.
pub type Backend = LibTorch<f32>;

/// On the CPU: all three, f32 first (measured: f16 matmul on libtorch's CPU is ~70x slower
/// than f32; bf16 is usable).
const CPU_DTYPES: &[DType] = &[DType::F32, DType::Bf16, DType::F16];
/// On CUDA GPUs, half precision first.
const CUDA_DTYPES: &[DType] = &[DType::F16, DType::Bf16, DType::F32];
/// On MPS: f16 and f32 (bf16 needs macOS 14 or later; not offered).
const MPS_DTYPES: &[DType] = &[DType::F16, DType::F32];

fn cuda_count() -> usize {
    if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

/// The devices libtorch sees, in `auto` order (MPS, CUDA, CPU).
pub fn devices() -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    if tch::utils::has_mps() {
        out.push(DeviceInfo {
            name: "mps".into(),
            dtypes: MPS_DTYPES.to_vec(),
        });
    }
    for index in 0..cuda_count() {
        out.push(DeviceInfo {
            name: format!("cuda:{index}"),
            dtypes: CUDA_DTYPES.to_vec(),
        });
    }
    out.push(DeviceInfo {
        name: "cpu".into(),
        dtypes: CPU_DTYPES.to_vec(),
    });
    out
}

/// Runs `job` on libtorch with the device, dtype and threads of `spec`.
pub fn run<J: BackendJob>(spec: &BackendConfig, job: J) -> Result<J::Output> {
    let (device, runtime) = init(spec)?;
    let capabilities = capabilities(&device);
    Ok(job.run::<Backend>(device, runtime, capabilities))
}

/// What libtorch offers on `device` beyond burn's ops: its fused ops everywhere (RMSNorm,
/// addmm, attention; `src/fused.rs`), and on CUDA, in a build with the `cuda-graphs`
/// feature, the recording and replay of the decode step (`src/graphs.rs`).
pub fn capabilities(device: &LibTorchDevice) -> Capabilities<Backend> {
    Capabilities {
        fused: Some(Fused(Arc::new(fused::TchFused::default()))),
        graphs: device_graphs(device),
    }
}

#[cfg(feature = "cuda-graphs")]
fn device_graphs(device: &LibTorchDevice) -> Option<Arc<dyn DeviceGraphs<Backend>>> {
    let graphs: Arc<dyn DeviceGraphs<Backend>> = Arc::new(graphs::TchGraphs);
    matches!(device, LibTorchDevice::Cuda(_)).then_some(graphs)
}

#[cfg(not(feature = "cuda-graphs"))]
fn device_graphs(_device: &LibTorchDevice) -> Option<Arc<dyn DeviceGraphs<Backend>>> {
    None
}

fn unavailable(device: &str, reason: String) -> Error {
    Error::DeviceUnavailable {
        backend: NAME.into(),
        device: device.into(),
        reason,
    }
}

/// Resolves `spec` to a libtorch device and dtype, or explains why it cannot run.
pub fn init(spec: &BackendConfig) -> Result<(LibTorchDevice, RuntimeInfo)> {
    let (device, name, dtypes) = match spec.device {
        DeviceSpec::Cpu => (LibTorchDevice::Cpu, "cpu".to_string(), CPU_DTYPES),
        DeviceSpec::Auto => {
            let best = devices().into_iter().next().map(|d| d.name);
            match best.as_deref() {
                Some("mps") => (LibTorchDevice::Mps, "mps".to_string(), MPS_DTYPES),
                Some(n) if n.starts_with("cuda") => {
                    (LibTorchDevice::Cuda(0), "cuda:0".to_string(), CUDA_DTYPES)
                }
                _ => (LibTorchDevice::Cpu, "cpu".to_string(), CPU_DTYPES),
            }
        }
        DeviceSpec::Cuda(index) => {
            let count = cuda_count();
            if index >= count {
                return Err(unavailable(
                    &spec.device.to_string(),
                    if count == 0 {
                        "libtorch sees no CUDA device (no GPU or driver, or this libtorch was built without CUDA)".into()
                    } else {
                        format!("libtorch sees {count} CUDA device(s), numbered from 0")
                    },
                ));
            }
            (
                LibTorchDevice::Cuda(index),
                format!("cuda:{index}"),
                CUDA_DTYPES,
            )
        }
        DeviceSpec::Metal(_) | DeviceSpec::Mps => {
            if !tch::utils::has_mps() {
                return Err(unavailable(
                    &spec.device.to_string(),
                    "libtorch sees no MPS device (MPS exists only on macOS with Apple GPUs)".into(),
                ));
            }
            (LibTorchDevice::Mps, "mps".to_string(), MPS_DTYPES)
        }
        _ => {
            return Err(unavailable(
                &spec.device.to_string(),
                "tch runs on cpu, cuda[:N] or mps".into(),
            ))
        }
    };
    let dtype = choose_dtype(spec.dtype, dtypes, NAME, &name)?;
    if spec.threads > 0 && matches!(device, LibTorchDevice::Cpu) {
        tch::set_num_threads(i32::try_from(spec.threads).unwrap_or(i32::MAX));
    }
    Ok((
        device,
        RuntimeInfo {
            backend: NAME.into(),
            device: name,
            dtype,
        },
    ))
}
