//! Backend selection errors and policies, each with its message.

use ember::{BackendConfig, DType, OnUnavailable};
use ember_cli::backends::{probe, resolve};

fn spec(name: &str, device: &str, dtype: DType) -> BackendConfig {
    BackendConfig {
        name: name.parse().unwrap(),
        device: device.parse().unwrap(),
        dtype,
        ..BackendConfig::default()
    }
}

/// The error of a config whose `[backend]` section is `backend`.
fn config_err(backend: &str) -> String {
    let text = format!("[model]\nsource = \"x.gguf\"\n[backend]\n{backend}\n");
    ember::EngineConfig::from_toml(&text, "test.toml")
        .expect_err("should not parse")
        .to_string()
}

fn err(spec: &BackendConfig) -> String {
    resolve(spec).expect_err("should not resolve").to_string()
}

#[test]
fn unknown_backend_is_named_with_the_known_ones() {
    let m = config_err("name = \"tensorflow\"");
    assert!(
        m.contains("tensorflow") && m.contains("`flex`, `candle`, `tch`, `wgpu`, `cuda`"),
        "{m}"
    );
    let m = "tensorflow".parse::<ember::BackendName>().unwrap_err();
    assert!(
        m.contains("unknown backend `tensorflow`") && m.contains("flex, candle, tch, wgpu, cuda"),
        "{m}"
    );
}

#[test]
fn a_backend_not_compiled_in_names_its_feature() {
    let compiled = ember_cli::backends::compiled();
    // Through `resolve` for every known backend this build lacks (tch in the default and
    // portable builds), and the message itself in any build.
    for (name, feature) in ember_cli::backends::KNOWN {
        if !compiled.contains(name) {
            let m = err(&spec(name, "cpu", DType::F32));
            assert!(
                m.contains(&format!("`{name}` is not compiled into this binary"))
                    && m.contains(&format!("--features {feature}")),
                "{m}"
            );
        }
    }
    let m = ember_cli::backends::not_compiled("tch").to_string();
    assert!(
        m.contains("`tch` is not compiled into this binary") && m.contains("--features tch"),
        "{m}"
    );
}

#[test]
fn unknown_device_names_are_errors() {
    let m = config_err("name = \"flex\"\ndevice = \"gpu0\"");
    assert!(
        m.contains("unknown device `gpu0`") && m.contains("test.toml"),
        "{m}"
    );
}

#[test]
fn a_device_the_backend_cannot_use_is_unavailable() {
    let m = err(&spec("flex", "cuda:0", DType::F32));
    assert!(
        m.contains("flex: device `cuda:0` is not available (flex runs on the CPU only)"),
        "{m}"
    );
}

#[test]
fn auto_picks_something_that_runs_and_fallback_relaxes() {
    let chosen = resolve(&spec("auto", "auto", DType::Auto)).unwrap();
    probe(&chosen).unwrap();
    // flex cannot use CUDA; with the fallback policy it runs on its own best device.
    let mut asked = spec("flex", "cuda:0", DType::F16);
    asked.on_unavailable = OnUnavailable::Fallback;
    let got = resolve(&asked).unwrap();
    assert_eq!(
        (
            got.name.as_str(),
            got.device.to_string().as_str(),
            got.dtype
        ),
        ("flex", "auto", DType::Auto)
    );
    assert_eq!(probe(&got).unwrap().dtype, DType::F32);
}

#[cfg(feature = "candle")]
#[test]
fn an_unsupported_dtype_is_named_with_the_supported_ones() {
    let m = err(&spec("candle", "cpu", DType::Bf16));
    assert!(
        m.contains("candle on cpu does not support bf16 (supported: f32, f16)"),
        "{m}"
    );
    let m = err(&spec("candle", "metal", DType::F16));
    assert!(m.contains("candle: device `metal` is not available"), "{m}");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_without_a_driver_is_an_error_not_a_panic() {
    match ember_cuda::device_count() {
        Ok(n) if n > 0 => {
            eprintln!("skipped: this machine has {n} CUDA device(s), so no error to check")
        }
        _ => {
            let m = err(&spec("cuda", "cuda:0", DType::F16));
            assert!(m.contains("cuda: device `cuda:0` is not available"), "{m}");
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_reports_bf16_as_unsupported_on_lavapipe() {
    let devices = ember_wgpu::devices();
    let Some(soft) = devices.iter().find(|d| d.name.starts_with("vulkan:cpu")) else {
        eprintln!("skipped: no software Vulkan adapter (install mesa-vulkan-drivers)");
        return;
    };
    assert!(
        soft.dtypes.contains(&DType::F32) && !soft.dtypes.contains(&DType::Bf16),
        "{soft:?}"
    );
    let m = err(&spec("wgpu", "vulkan:cpu", DType::Bf16));
    assert!(m.contains("does not support bf16"), "{m}");
}

#[cfg(feature = "flex")]
#[test]
fn threads_above_the_cores_are_capped_before_the_backend_starts() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let asked = BackendConfig {
        threads: 3000,
        ..spec("flex", "cpu", DType::F32)
    };
    assert_eq!(resolve(&asked).unwrap().threads, cores);
}
