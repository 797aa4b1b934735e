//! Backend selection at run time, among the backend crates compiled into this binary.
//!
//! `auto` walks the order the porting guides use (Metal/MPS, then CUDA, then Vulkan, then
//! CPU) and logs why it chose what it chose. A backend that is not compiled in is an error
//! naming the cargo feature that adds it.

use ember::backend::DeviceSpec;
use ember::{
    BackendConfig, BackendJob, BackendName, DType, DeviceInfo, Error, OnUnavailable, RuntimeInfo,
};

/// Every backend Ember has a crate for, with the cargo feature of `ember-cli` that adds it.
pub const KNOWN: &[(&str, &str)] = &[
    ("flex", "flex"),
    ("candle", "candle"),
    ("tch", "tch"),
    ("wgpu", "wgpu"),
    ("cuda", "cuda"),
];

/// The backends compiled into this binary.
pub fn compiled() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "flex") {
        out.push("flex");
    }
    if cfg!(feature = "candle") {
        out.push("candle");
    }
    if cfg!(feature = "tch") {
        out.push("tch");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    out
}

/// `(backend, device)` pairs `auto` tries, best first.
const AUTO_ORDER: &[(BackendName, DeviceSpec, &str)] = &[
    (BackendName::Wgpu, DeviceSpec::Metal(None), "Metal GPU"),
    (BackendName::Tch, DeviceSpec::Mps, "Apple GPU (MPS)"),
    (BackendName::Candle, DeviceSpec::Metal(None), "Metal GPU"),
    (BackendName::Cuda, DeviceSpec::Cuda(0), "CUDA GPU"),
    (BackendName::Candle, DeviceSpec::Cuda(0), "CUDA GPU"),
    (BackendName::Tch, DeviceSpec::Cuda(0), "CUDA GPU"),
    (BackendName::Wgpu, DeviceSpec::Vulkan(None), "Vulkan GPU"),
    (BackendName::Flex, DeviceSpec::Cpu, "CPU"),
    (BackendName::Candle, DeviceSpec::Cpu, "CPU"),
    (BackendName::Tch, DeviceSpec::Cpu, "CPU"),
];

/// Whether `asked` (a config's device) admits `candidate` (a device `auto` tries): `auto`
/// admits any; otherwise the same kind of device.
fn same_kind(asked: DeviceSpec, candidate: DeviceSpec) -> bool {
    let kind = |d: DeviceSpec| {
        let text = d.to_string();
        text.split(':').next().unwrap_or_default().to_string()
    };
    asked == DeviceSpec::Auto || kind(asked) == kind(candidate)
}

/// The devices each compiled-in backend sees.
#[allow(clippy::vec_init_then_push)] // every push is feature-gated
pub fn devices() -> Vec<(&'static str, Vec<DeviceInfo>)> {
    let mut out = Vec::new();
    #[cfg(feature = "flex")]
    out.push((ember_flex::NAME, ember_flex::devices()));
    #[cfg(feature = "candle")]
    out.push((ember_candle::NAME, ember_candle::devices()));
    #[cfg(feature = "tch")]
    out.push((ember_tch::NAME, ember_tch::devices()));
    #[cfg(feature = "wgpu")]
    out.push((ember_wgpu::NAME, ember_wgpu::devices()));
    #[cfg(feature = "cuda")]
    out.push((ember_cuda::NAME, ember_cuda::devices()));
    out
}

/// Checks that `spec` can run here, without running anything: what would run, or why not.
pub fn probe(spec: &BackendConfig) -> ember::Result<RuntimeInfo> {
    match spec.name.as_str() {
        #[cfg(feature = "flex")]
        "flex" => ember_flex::init(spec).map(|(_, r)| r),
        #[cfg(feature = "candle")]
        "candle" => ember_candle::init(spec).map(|(_, r)| r),
        #[cfg(feature = "tch")]
        "tch" => ember_tch::init(spec).map(|(_, r)| r),
        #[cfg(feature = "wgpu")]
        "wgpu" => ember_wgpu::init(spec).map(|(_, r)| r),
        #[cfg(feature = "cuda")]
        "cuda" => ember_cuda::init(spec).map(|(_, r)| r),
        _ => Err(not_compiled(spec.name.as_str())),
    }
}

/// The error for a backend this binary lacks: unknown, or the cargo feature that adds it.
pub fn not_compiled(name: &str) -> Error {
    match KNOWN.iter().find(|(n, _)| *n == name) {
        Some((_, feature)) => Error::Backend(format!(
            "backend `{name}` is not compiled into this binary; rebuild with `cargo build --release --features {feature}` (compiled in: {})",
            compiled().join(", ")
        )),
        None => Error::Backend(format!(
            "unknown backend `{name}` (known: {}, auto)",
            KNOWN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Turns `auto` and the fallback policy into one concrete backend config that probes fine,
/// its threads capped at the machine's cores ([`BackendConfig::with_threads_capped`]).
pub fn resolve(spec: &BackendConfig) -> ember::Result<BackendConfig> {
    // Before any probe: a backend's probe may size its thread pool.
    let spec = &spec.clone().with_threads_capped();
    if spec.name == BackendName::Auto {
        return resolve_auto(spec);
    }
    match probe(spec) {
        Ok(_) => Ok(spec.clone()),
        Err(e) if spec.on_unavailable == OnUnavailable::Fallback => {
            // Same backend on its best device and dtype, else the best of everything.
            let mut relaxed = spec.clone();
            relaxed.device = DeviceSpec::Auto;
            relaxed.dtype = DType::Auto;
            let chosen = match probe(&relaxed) {
                Ok(_) => relaxed,
                Err(_) => resolve_auto(&BackendConfig {
                    name: BackendName::Auto,
                    device: DeviceSpec::Auto,
                    dtype: DType::Auto,
                    ..spec.clone()
                })?,
            };
            tracing::warn!(
                "{e}; falling back (backend.on_unavailable = \"fallback\"): asked for {} on {} in {}, running {} on {} in {}",
                spec.name, spec.device, spec.dtype, chosen.name, chosen.device, chosen.dtype
            );
            Ok(chosen)
        }
        Err(e) => Err(e),
    }
}

fn resolve_auto(spec: &BackendConfig) -> ember::Result<BackendConfig> {
    let compiled = compiled();
    let mut reasons = Vec::new();
    for &(name, device, what) in AUTO_ORDER {
        if !compiled.contains(&name.as_str()) || !same_kind(spec.device, device) {
            continue;
        }
        let candidate = BackendConfig {
            name,
            device: if spec.device == DeviceSpec::Auto {
                device
            } else {
                spec.device
            },
            ..spec.clone()
        };
        match probe(&candidate) {
            // A software Vulkan device is no GPU: `auto` moves on to the CPU backends.
            Ok(info) if info.device.contains(":cpu") => {
                reasons.push(format!("{name}: only a software adapter ({})", info.device))
            }
            Ok(info) => {
                tracing::info!(
                    "backend auto: chose {name} on {} in {} (first available {what}; {})",
                    info.device,
                    info.dtype,
                    if reasons.is_empty() {
                        "nothing better was tried".to_string()
                    } else {
                        reasons.join("; ")
                    }
                );
                return Ok(candidate);
            }
            Err(e) => reasons.push(format!("{name} on {device}: {e}")),
        }
    }
    Err(Error::Backend(format!(
        "backend auto: nothing can run (compiled in: {}): {}",
        compiled.join(", "),
        reasons.join("; ")
    )))
}

/// Resolves `spec` and runs `job` on the chosen backend.
pub fn dispatch<J: BackendJob>(spec: &BackendConfig, job: J) -> ember::Result<J::Output> {
    let spec = resolve(spec)?;
    match spec.name.as_str() {
        #[cfg(feature = "flex")]
        "flex" => ember_flex::run(&spec, job),
        #[cfg(feature = "candle")]
        "candle" => ember_candle::run(&spec, job),
        #[cfg(feature = "tch")]
        "tch" => ember_tch::run(&spec, job),
        #[cfg(feature = "wgpu")]
        "wgpu" => ember_wgpu::run(&spec, job),
        #[cfg(feature = "cuda")]
        "cuda" => ember_cuda::run(&spec, job),
        _ => Err(not_compiled(spec.name.as_str())),
    }
}

/// The first log line of every command that loads a model: backend, device, dtype.
pub fn log_runtime(runtime: &ember::RuntimeInfo) {
    tracing::info!(
        "backend {} | device {} | dtype {}",
        runtime.backend,
        runtime.device,
        runtime.dtype
    );
}
