//! Ember on burn's flex backend: pure-Rust, runs on any CPU, the embedded default.

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::tensor::backend::{get_device_settings, set_default_dtypes, DeviceError};
use burn::tensor::{FloatDType, IntDType};
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

/// Checks `spec` against what flex supports, sets the CPU threads and the device's float
/// type, and returns the device to run on.
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
    set_dtype(&device, dtype)?;
    let runtime = RuntimeInfo {
        backend: NAME.into(),
        device: "cpu".into(),
        dtype,
    };
    Ok((device, runtime))
}

fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::Bf16 => FloatDType::BF16,
        DType::F32 | DType::Auto => FloatDType::F32,
    }
}

/// Sets the device's default float type; a second run in the same process may only ask for
/// the type already set (burn fixes it per device for the process).
fn set_dtype(device: &FlexDevice, dtype: DType) -> Result<()> {
    let wanted = float_dtype(dtype);
    match set_default_dtypes::<Flex>(device, wanted, IntDType::I64) {
        Ok(()) => Ok(()),
        Err(DeviceError::AlreadyInitialized { .. }) => {
            let current = get_device_settings::<Flex>(device).float_dtype;
            if current == wanted {
                Ok(())
            } else {
                Err(Error::Backend(format!(
                    "this process already runs flex in {current:?}; burn cannot switch the CPU device to {dtype}"
                )))
            }
        }
        Err(e) => Err(Error::Backend(format!("flex cannot use {dtype}: {e}"))),
    }
}
