//! Ember on burn's candle backend: CPU always, CUDA and Metal with the `cuda` / `metal`
//! features.
// Bad input (a file, a config, a user's text) must come back as an error, never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// burn 0.21 marks burn-candle deprecated (it is gone after 0.21); Ember pins 0.21 to keep it.
#![allow(deprecated)]

use burn::backend::candle::CandleDevice;
use burn::backend::Candle;
use ember::backend::{choose_dtype, DeviceSpec};
use ember::{
    BackendConfig, BackendJob, Capabilities, DType, DeviceInfo, Error, Result, RuntimeInfo,
};

/// The name configs use for this backend.
pub const NAME: &str = "candle";

/// The concrete backend type.
pub type Backend = Candle;

/// On the CPU: f32 and f16 (candle's CPU matmul has no bf16: `unsupported dtype BF16 for op matmul`).
const CPU_DTYPES: &[DType] = &[DType::F32, DType::F16];
/// On GPUs, half precision first.
#[cfg(any(feature = "cuda", feature = "metal"))]
const GPU_DTYPES: &[DType] = &[DType::F16, DType::Bf16, DType::F32];

/// The devices candle sees, in `auto` order (Metal, CUDA, CPU).
#[allow(clippy::vec_init_then_push)] // the pushes before the CPU one are feature-gated
pub fn devices() -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    #[cfg(feature = "metal")]
    if candle_core::utils::metal_is_available() {
        out.push(DeviceInfo {
            name: "metal:0".into(),
            dtypes: GPU_DTYPES.to_vec(),
        });
    }
    #[cfg(feature = "cuda")]
    if candle_core::utils::cuda_is_available() {
        out.push(DeviceInfo {
            name: "cuda:0".into(),
            dtypes: GPU_DTYPES.to_vec(),
        });
    }
    out.push(DeviceInfo {
        name: "cpu".into(),
        dtypes: CPU_DTYPES.to_vec(),
    });
    out
}

/// Runs `job` on candle with the device and dtype of `spec`.
pub fn run<J: BackendJob>(spec: &BackendConfig, job: J) -> Result<J::Output> {
    let (device, runtime) = init(spec)?;
    let capabilities = capabilities(&device);
    Ok(job.run::<Candle>(device, runtime, capabilities))
}

/// What this backend offers on `device` beyond burn's ops: nothing yet (no fused ops, no
/// graph replay).
pub fn capabilities(_device: &CandleDevice) -> Capabilities<Backend> {
    Capabilities::none()
}

fn unavailable(device: &str, reason: &str) -> Error {
    Error::DeviceUnavailable {
        backend: NAME.into(),
        device: device.into(),
        reason: reason.into(),
    }
}

/// Resolves `spec` to a candle device and dtype, or explains why it cannot run.
pub fn init(spec: &BackendConfig) -> Result<(CandleDevice, RuntimeInfo)> {
    let requested = spec.device;
    let (device, name, dtypes): (CandleDevice, String, &[DType]) = match requested {
        DeviceSpec::Cpu => (CandleDevice::Cpu, "cpu".into(), CPU_DTYPES),
        DeviceSpec::Auto => {
            let best = devices()
                .into_iter()
                .next()
                .map(|d| d.name)
                .unwrap_or_else(|| "cpu".into());
            if best == "cpu" {
                (CandleDevice::Cpu, best, CPU_DTYPES)
            } else {
                let mut auto = spec.clone();
                auto.device = DeviceSpec::parse(&best)?;
                return init(&auto);
            }
        }
        DeviceSpec::Cuda(index) => cuda(index, &spec.device.to_string())?,
        DeviceSpec::Metal(index) => metal(index.unwrap_or(0), &spec.device.to_string())?,
        _ => {
            return Err(unavailable(
                &spec.device.to_string(),
                "candle runs on cpu, cuda[:N] or metal[:N]",
            ))
        }
    };
    let dtype = choose_dtype(spec.dtype, dtypes, NAME, &name)?;
    Ok((
        device,
        RuntimeInfo {
            backend: NAME.into(),
            device: name,
            dtype,
        },
    ))
}

#[cfg(feature = "cuda")]
fn cuda(index: usize, name: &str) -> Result<(CandleDevice, String, &'static [DType])> {
    if !candle_core::utils::cuda_is_available() {
        return Err(unavailable(name, "no CUDA device found"));
    }
    Ok((
        CandleDevice::cuda(index),
        format!("cuda:{index}"),
        GPU_DTYPES,
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize, name: &str) -> Result<(CandleDevice, String, &'static [DType])> {
    Err(unavailable(
        name,
        "this build of ember-candle has no CUDA support: rebuild with the `candle-cuda` feature",
    ))
}

#[cfg(feature = "metal")]
fn metal(index: usize, name: &str) -> Result<(CandleDevice, String, &'static [DType])> {
    if !candle_core::utils::metal_is_available() {
        return Err(unavailable(name, "no Metal device found"));
    }
    Ok((
        CandleDevice::metal(index),
        format!("metal:{index}"),
        GPU_DTYPES,
    ))
}

#[cfg(not(feature = "metal"))]
fn metal(_: usize, name: &str) -> Result<(CandleDevice, String, &'static [DType])> {
    Err(unavailable(
        name,
        "this build of ember-candle has no Metal support: rebuild with the `candle-metal` feature",
    ))
}
