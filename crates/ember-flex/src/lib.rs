//! Ember on burn's flex backend: pure-Rust, runs on any CPU, the embedded default.

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use ember::{BackendConfig, BackendJob, DType, DeviceInfo, Error, Result, RuntimeInfo};

/// The name configs use for this backend.
pub const NAME: &str = "flex";

/// The concrete backend type.
pub type Backend = Flex;

/// Float types flex computes in (measured: f32, f16 and bf16 all run on the CPU).
pub const DTYPES: &[DType] = &[DType::F32, DType::F16, DType::Bf16];

/// The devices flex sees: one CPU.
pub fn devices() -> Vec<DeviceInfo> {
    vec![DeviceInfo {
        name: "cpu".into(),
        dtypes: DTYPES.to_vec(),
    }]
}

/// Runs `job` on flex with the device, dtype and threads of `spec`.
pub fn run<J: BackendJob>(spec: &BackendConfig, job: J) -> Result<J::Output> {
    let (device, runtime) = init(spec)?;
    Ok(job.run::<Flex>(device, runtime))
}

/// Checks `spec` against what flex supports, sets the CPU threads, and returns the device
/// and what runs there (the engine creates its tensors in `runtime.dtype`).
pub fn init(spec: &BackendConfig) -> Result<(FlexDevice, RuntimeInfo)> {
    if !matches!(spec.device.as_str(), "auto" | "cpu") {
        return Err(Error::Backend(format!(
            "the flex backend runs on device `cpu` only, not `{}`",
            spec.device
        )));
    }
    let dtype = match spec.dtype {
        DType::Auto => DType::F32,
        d => d,
    };
    if spec.threads > 0 {
        // Only the first pool of the process takes effect; later runs keep it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(spec.threads)
            .build_global();
    }
    let device = FlexDevice;
    let runtime = RuntimeInfo {
        backend: NAME.into(),
        device: "cpu".into(),
        dtype,
    };
    Ok((device, runtime))
}
