//! Ember on burn's CubeCL CUDA backend. The driver and NVRTC are loaded at run time, so this
//! builds anywhere; the device is probed through the driver before burn touches it (burn
//! panics when there is none).
// Bad input (a file, a config, a user's text) must come back as an error, never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use burn::backend::cuda::CudaDevice;
use cubecl::cuda::CudaRuntime;

use ember::backend::{choose_dtype, supported_dtypes, DeviceSpec};
use ember::{
    BackendConfig, BackendJob, Capabilities, DType, DeviceInfo, Error, Result, RuntimeInfo,
};

/// The name configs use for this backend.
pub const NAME: &str = "cuda";

/// The concrete backend type: burn's CubeCL CUDA backend without burn-fusion's wrapper (burn's
/// `Cuda` is `Fusion<` this `>`). On it Ember's kernels launch from the caller's thread
/// instead of going through burn-fusion's stream and thread, which a profile of decode on
/// an H200 found to set the pace (change 44 in docs/performance.md); burn's own ops then run
/// unfused, one kernel each.
pub type Backend = ember_cubecl::CubeBackend<CudaRuntime, f32, i32, u8>;

/// Number of CUDA devices the driver reports, or why there are none.
pub fn device_count() -> std::result::Result<usize, String> {
    // With candle-CUDA in the same binary, cudarc links libcuda instead of loading it (the
    // binary does not start without it), and there is nothing to probe.
    #[cfg(not(feature = "linked-driver"))]
    // SAFETY: only checks whether the driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda) is not installed".into());
    }
    cudarc::driver::result::init().map_err(|e| format!("the CUDA driver failed to start: {e}"))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("the CUDA driver cannot count devices: {e}"))?;
    Ok(count.max(0) as usize)
}

fn dtypes(device: &CudaDevice) -> Vec<DType> {
    supported_dtypes::<Backend>(device, &[DType::F16, DType::Bf16, DType::F32])
}

/// The CUDA devices the driver sees, with the dtypes burn supports on each.
pub fn devices() -> Vec<DeviceInfo> {
    (0..device_count().unwrap_or(0))
        .map(|index| DeviceInfo {
            name: format!("cuda:{index}"),
            dtypes: dtypes(&CudaDevice::new(index)),
        })
        .collect()
}

/// Runs `job` on CUDA with the device and dtype of `spec`.
pub fn run<J: BackendJob>(spec: &BackendConfig, job: J) -> Result<J::Output> {
    let (device, runtime) = init(spec)?;
    let capabilities = capabilities(&device);
    Ok(job.run::<Backend>(device, runtime, capabilities))
}

/// What this backend offers on `device` beyond burn's ops: the CubeCL kernels of
/// `ember-cubecl` (RMSNorm, decode attention; off with `EMBER_CUBECL=off`), no graph replay.
pub fn capabilities(_device: &CudaDevice) -> Capabilities<Backend> {
    Capabilities {
        fused: ember_cubecl::fused(),
        graphs: None,
    }
}

/// Resolves `spec` to a CUDA device and dtype, or explains why it cannot run.
pub fn init(spec: &BackendConfig) -> Result<(CudaDevice, RuntimeInfo)> {
    let unavailable = |reason: String| Error::DeviceUnavailable {
        backend: NAME.into(),
        device: spec.device.to_string(),
        reason,
    };
    let index = match spec.device {
        DeviceSpec::Auto => 0,
        DeviceSpec::Cuda(index) => index,
        _ => {
            return Err(unavailable(
                "the cuda backend runs on cuda[:N] devices".into(),
            ))
        }
    };
    let count = device_count().map_err(unavailable)?;
    if index >= count {
        return Err(unavailable(format!(
            "the driver reports {count} CUDA device(s)"
        )));
    }
    let device = CudaDevice::new(index);
    let name = format!("cuda:{index}");
    let dtype = choose_dtype(spec.dtype, &dtypes(&device), NAME, &name)?;
    Ok((
        device,
        RuntimeInfo {
            backend: NAME.into(),
            device: name,
            dtype,
        },
    ))
}
