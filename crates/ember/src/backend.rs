//! What backend crates share: device names as configs write them, dtype resolution, and the
//! [`Capabilities`] a backend hands to the engine.

use std::sync::Arc;

use crate::config::DType;
use crate::error::{Error, Result};
use crate::graph::DeviceGraphs;
use crate::nn::Fused;

/// What a backend can do beyond burn's ops, handed by its backend crate to the code it runs
/// ([`crate::BackendJob::run`]) and from there to [`crate::Engine::load`]: a value, not a
/// global, so that two engines in one process can be given different ones and a test can
/// give none. Each capability has a portable default that runs when it is absent, and a
/// test that compares the two.
#[derive(Clone)]
pub struct Capabilities<B: burn::prelude::Backend> {
    /// Ops the backend runs as one kernel ([`crate::nn::FusedOps`]); the model families take
    /// them from the [`crate::format::Loader`] and run burn's ops where absent.
    pub fused: Option<Fused<B>>,
    /// Recording the decode step once and replaying it ([`crate::graph`]); an engine uses
    /// it where `backend.graphs` is set and it supports the device.
    pub graphs: Option<Arc<dyn DeviceGraphs<B>>>,
}

impl<B: burn::prelude::Backend> Capabilities<B> {
    /// No capabilities: burn's ops only, eager decoding.
    pub fn none() -> Self {
        Self {
            fused: None,
            graphs: None,
        }
    }
}

impl<B: burn::prelude::Backend> Default for Capabilities<B> {
    fn default() -> Self {
        Self::none()
    }
}

impl<B: burn::prelude::Backend> std::fmt::Debug for Capabilities<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("fused", &self.fused.is_some())
            .field("graphs", &self.graphs.is_some())
            .finish()
    }
}

/// A `backend.device` value; configs and flags write it as text ([`DeviceSpec::FORMS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The best device the backend sees.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU (`cuda`, `cuda:N`).
    Cuda(usize),
    /// A Vulkan adapter (`vulkan`, `vulkan:N`; `vulkan:cpu` is a software device such as lavapipe).
    Vulkan(Option<usize>),
    /// A software Vulkan device (`vulkan:cpu`).
    VulkanCpu,
    /// An Apple GPU through Metal (`metal`: the first; `metal:N`).
    Metal(Option<usize>),
    /// An Apple GPU through PyTorch's MPS.
    Mps,
}

impl DeviceSpec {
    /// The accepted forms, as `--help` and errors list them.
    pub const FORMS: &'static str = "auto, cpu, cuda[:N], vulkan[:N|:cpu], metal[:N] or mps";

    /// Parses a device name; the error lists the accepted forms.
    pub fn parse(name: &str) -> Result<Self> {
        let (kind, index) = match name.split_once(':') {
            Some((k, i)) => (k, Some(i)),
            None => (name, None),
        };
        let bad = || {
            Error::Backend(format!(
                "unknown device `{name}` (expected {})",
                Self::FORMS
            ))
        };
        let number = |i: Option<&str>| -> Result<usize> {
            i.map_or(Ok(0), |i| i.parse().map_err(|_| bad()))
        };
        Ok(match kind {
            "auto" if index.is_none() => DeviceSpec::Auto,
            "cpu" if index.is_none() => DeviceSpec::Cpu,
            "cuda" => DeviceSpec::Cuda(number(index)?),
            "vulkan" if index == Some("cpu") => DeviceSpec::VulkanCpu,
            "vulkan" => {
                DeviceSpec::Vulkan(index.map(|i| i.parse().map_err(|_| bad())).transpose()?)
            }
            "metal" => DeviceSpec::Metal(index.map(|i| i.parse().map_err(|_| bad())).transpose()?),
            "mps" if index.is_none() => DeviceSpec::Mps,
            _ => return Err(bad()),
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Vulkan(None) => f.write_str("vulkan"),
            DeviceSpec::Vulkan(Some(i)) => write!(f, "vulkan:{i}"),
            DeviceSpec::VulkanCpu => f.write_str("vulkan:cpu"),
            DeviceSpec::Metal(None) => f.write_str("metal"),
            DeviceSpec::Metal(Some(i)) => write!(f, "metal:{i}"),
            DeviceSpec::Mps => f.write_str("mps"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Self::parse(&s).map_err(|e| e.to_string())
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// The dtypes of `preference` that backend `B` supports on `device`, in that order.
pub fn supported_dtypes<B: burn::prelude::Backend>(
    device: &B::Device,
    preference: &[DType],
) -> Vec<DType> {
    preference
        .iter()
        .copied()
        .filter(|d| d.to_burn().is_some_and(|b| B::supports_dtype(device, b)))
        .collect()
}

/// The dtype to run: the first of `supported` for `auto`, else `requested` if supported.
///
/// `supported` is in order of preference for that device.
pub fn choose_dtype(
    requested: DType,
    supported: &[DType],
    backend: &str,
    device: &str,
) -> Result<DType> {
    let list = || {
        supported
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match requested {
        DType::Auto => supported
            .first()
            .copied()
            .ok_or_else(|| Error::Backend(format!("{backend} supports no dtype on {device}"))),
        d if supported.contains(&d) => Ok(d),
        d => Err(Error::UnsupportedDType {
            backend: backend.into(),
            device: device.into(),
            dtype: d,
            supported: list(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(DeviceSpec::parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            DeviceSpec::parse("vulkan").unwrap(),
            DeviceSpec::Vulkan(None)
        );
        assert_eq!(
            DeviceSpec::parse("vulkan:cpu").unwrap(),
            DeviceSpec::VulkanCpu
        );
        for bad in ["gpu", "cuda:x", "cpu:1", "mps:0", ""] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
        for text in [
            "auto",
            "cpu",
            "cuda:1",
            "vulkan",
            "vulkan:2",
            "vulkan:cpu",
            "metal",
            "metal:1",
            "mps",
        ] {
            assert_eq!(DeviceSpec::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn dtype_choice() {
        let s = [DType::F32, DType::F16];
        assert_eq!(choose_dtype(DType::Auto, &s, "b", "d").unwrap(), DType::F32);
        assert_eq!(choose_dtype(DType::F16, &s, "b", "d").unwrap(), DType::F16);
        let m = choose_dtype(DType::Bf16, &s, "candle", "cpu")
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("candle on cpu does not support bf16 (supported: f32, f16)"),
            "{m}"
        );
    }
}
