//! Ember on burn's wgpu backend: Vulkan with the SPIR-V compiler on Linux and Windows,
//! Metal with the native MSL compiler on macOS. The same generic model code runs on both;
//! only the compiled-in graphics API differs.
//!
//! wgpu panics in a worker thread when no adapter exists, so adapters are probed here
//! first and a missing one is an error.
// Bad input (a file, a config, a user's text) must come back as an error, never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use burn::backend::wgpu::WgpuDevice;
use burn::backend::Wgpu;

use ember::backend::{choose_dtype, supported_dtypes, DeviceSpec};
use ember::{
    BackendConfig, BackendJob, Capabilities, DType, DeviceInfo, Error, Result, RuntimeInfo,
};

/// The name configs use for this backend.
pub const NAME: &str = "wgpu";

/// The concrete backend type (with burn's kernel fusion).
pub type Backend = Wgpu;

/// The graphics API this build targets.
#[cfg(target_os = "macos")]
pub const API: &str = "metal";
/// The graphics API this build targets.
#[cfg(not(target_os = "macos"))]
pub const API: &str = "vulkan";

#[cfg(target_os = "macos")]
const BACKENDS: wgpu::Backends = wgpu::Backends::METAL;
#[cfg(not(target_os = "macos"))]
const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN;

/// One adapter the graphics API reports.
#[derive(Debug, Clone)]
struct Adapter {
    name: String,
    device: WgpuDevice,
    /// `vulkan:N` / `metal:N`, or `vulkan:cpu` for a software device.
    config_name: String,
}

fn adapters() -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: BACKENDS,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let found = block_on(instance.enumerate_adapters(BACKENDS));
    let (mut discrete, mut integrated, mut virtual_gpu) = (0, 0, 0);
    let mut out = Vec::new();
    for (i, adapter) in found.iter().enumerate() {
        let info = adapter.get_info();
        let device = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => {
                discrete += 1;
                WgpuDevice::DiscreteGpu(discrete - 1)
            }
            wgpu::DeviceType::IntegratedGpu => {
                integrated += 1;
                WgpuDevice::IntegratedGpu(integrated - 1)
            }
            wgpu::DeviceType::VirtualGpu => {
                virtual_gpu += 1;
                WgpuDevice::VirtualGpu(virtual_gpu - 1)
            }
            wgpu::DeviceType::Cpu => WgpuDevice::Cpu,
            wgpu::DeviceType::Other => continue,
        };
        let config_name = if device == WgpuDevice::Cpu {
            format!("{API}:cpu")
        } else {
            format!("{API}:{i}")
        };
        out.push(Adapter {
            name: info.name,
            device,
            config_name,
        });
    }
    // Hardware first: `auto` and a bare `vulkan` take the best adapter.
    out.sort_by_key(|a| match a.device {
        WgpuDevice::DiscreteGpu(_) => 0,
        WgpuDevice::IntegratedGpu(_) => 1,
        WgpuDevice::VirtualGpu(_) => 2,
        _ => 3,
    });
    out
}

/// Polls a future that the native wgpu backends complete immediately.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

fn dtypes(device: &WgpuDevice) -> Vec<DType> {
    supported_dtypes::<Backend>(device, &[DType::F16, DType::F32, DType::Bf16])
}

/// The adapters wgpu sees, best first, with the dtypes each supports.
pub fn devices() -> Vec<DeviceInfo> {
    adapters()
        .into_iter()
        .map(|a| DeviceInfo {
            dtypes: dtypes(&a.device),
            name: format!("{} ({})", a.config_name, a.name),
        })
        .collect()
}

/// Runs `job` on wgpu with the device and dtype of `spec`.
pub fn run<J: BackendJob>(spec: &BackendConfig, job: J) -> Result<J::Output> {
    let (device, runtime) = init(spec)?;
    let capabilities = capabilities(&device);
    Ok(job.run::<Backend>(device, runtime, capabilities))
}

/// What this backend offers on `device` beyond burn's ops: the CubeCL kernels of
/// `ember-cubecl` (RMSNorm, decode attention) on GPU adapters, no graph replay. A software
/// adapter (Mesa's lavapipe: `vulkan:cpu`) keeps burn's ops: there the kernels' workgroup
/// barriers made decode slower, not faster (docs/performance.md, change 23);
/// `EMBER_CUBECL=on` runs them there too, `off` nowhere.
pub fn capabilities(device: &WgpuDevice) -> Capabilities<Backend> {
    let forced_on =
        std::env::var(ember_cubecl::ENV_SWITCH).is_ok_and(|v| v.eq_ignore_ascii_case("on"));
    let fused = if *device == WgpuDevice::Cpu && !forced_on {
        None
    } else {
        ember_cubecl::fused()
    };
    Capabilities {
        fused,
        graphs: None,
    }
}

/// Resolves `spec` to an adapter and dtype, or explains why it cannot run.
pub fn init(spec: &BackendConfig) -> Result<(WgpuDevice, RuntimeInfo)> {
    let unavailable = |reason: String| Error::DeviceUnavailable {
        backend: NAME.into(),
        device: spec.device.to_string(),
        reason,
    };
    let all = adapters();
    if all.is_empty() {
        return Err(unavailable(format!(
            "no {API} adapter found (on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
        )));
    }
    let listed = || {
        all.iter()
            .map(|a| a.config_name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match spec.device {
        DeviceSpec::Auto => all.first(),
        DeviceSpec::Vulkan(None) if API == "vulkan" => all.first(),
        DeviceSpec::Metal(None) if API == "metal" => all.first(),
        DeviceSpec::Vulkan(Some(_)) | DeviceSpec::Metal(Some(_)) | DeviceSpec::VulkanCpu => {
            let name = spec.device.to_string();
            all.iter().find(|a| a.config_name == name)
        }
        _ => {
            return Err(unavailable(format!(
                "this wgpu build drives {API} adapters ({})",
                listed()
            )))
        }
    };
    let adapter = chosen.ok_or_else(|| unavailable(format!("adapters present: {}", listed())))?;
    let supported = dtypes(&adapter.device);
    let dtype = choose_dtype(spec.dtype, &supported, NAME, &adapter.config_name)?;
    Ok((
        adapter.device.clone(),
        RuntimeInfo {
            backend: NAME.into(),
            device: format!("{} ({})", adapter.config_name, adapter.name),
            dtype,
        },
    ))
}
