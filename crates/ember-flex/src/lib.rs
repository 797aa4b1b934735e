//! Ember on burn's flex backend: pure-Rust, runs on any CPU, the embedded default.
// Bad input (a file, a config, a user's text) must come back as an error, never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod flash;
pub mod fused;

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use ember::backend::{choose_dtype, DeviceSpec};
use ember::{
    BackendConfig, BackendJob, Capabilities, DType, DeviceInfo, Error, KernelInputs, Result,
    RuntimeInfo,
};

/// The name configs use for this backend.
pub const NAME: &str = "flex";

/// The concrete backend type.
pub type Backend = Flex;

/// Float types flex computes in, best first (measured: all three run on the CPU; f32 is
/// the fastest there).
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
    let inputs = match spec.kernel_inputs {
        None => ember_kernels::Inputs::from_env(),
        Some(KernelInputs::Q8) => ember_kernels::Inputs::Q8,
        Some(KernelInputs::F32) => ember_kernels::Inputs::F32,
    };
    let capabilities = capabilities_with(fused::FlexFused::new(inputs));
    Ok(job.run::<Flex>(device, runtime, capabilities))
}

/// What this backend offers on `device` beyond burn's ops: products with quantized weights
/// on `ember-kernels` ([`fused::FlexFused`], for `[model] weights = "keep"`, their inputs as
/// `EMBER_KERNEL_INPUTS` says); no graph replay.
pub fn capabilities(_device: &FlexDevice) -> Capabilities<Backend> {
    capabilities_with(fused::FlexFused::default())
}

fn capabilities_with(fused: fused::FlexFused) -> Capabilities<Backend> {
    Capabilities {
        fused: Some(ember::nn::Fused(std::sync::Arc::new(fused))),
        graphs: None,
    }
}

/// Checks `spec` against what flex supports, sets the CPU threads, and returns the device
/// and what runs there (the engine creates its tensors in `runtime.dtype`).
pub fn init(spec: &BackendConfig) -> Result<(FlexDevice, RuntimeInfo)> {
    match spec.device {
        DeviceSpec::Auto | DeviceSpec::Cpu => {}
        _ => {
            return Err(Error::DeviceUnavailable {
                backend: NAME.into(),
                device: spec.device.to_string(),
                reason: "flex runs on the CPU only".into(),
            })
        }
    }
    let dtype = choose_dtype(spec.dtype, DTYPES, NAME, "cpu")?;
    if spec.threads > 0 {
        // Only the first pool of the process takes effect; later runs keep it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(spec.threads)
            .build_global();
    }
    let runtime = RuntimeInfo {
        backend: NAME.into(),
        device: "cpu".into(),
        dtype,
    };
    Ok((FlexDevice, runtime))
}
