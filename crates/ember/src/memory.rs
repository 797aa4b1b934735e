//! How much memory a model will take, checked against what the machine has before anything is
//! allocated, so that a config or a file declaring a huge model fails with both numbers instead
//! of being killed by the OS half-way through a load.

use crate::error::{Error, Result};

/// Bytes of memory available to a new allocation, as the OS reports it: `MemAvailable` on
/// Linux, the physical memory size on macOS (unified memory, shared with the GPU). `None`
/// where Ember cannot tell.
pub fn available_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        parse_meminfo(&text)
    }
    #[cfg(target_os = "macos")]
    {
        let mut size: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: `hw.memsize` is a u64; `size` and `len` describe a valid u64 buffer.
        let rc = unsafe {
            libc::sysctlbyname(
                c"hw.memsize".as_ptr(),
                (&mut size as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0).then_some(size)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        None
    }
}

/// `MemAvailable` of `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Whether a device keeps tensors in the host's memory: the CPU, a software GPU on the CPU
/// (lavapipe's `vulkan:cpu`), and Apple's unified-memory GPUs (`metal`, `mps`). A discrete GPU
/// has its own memory, which burn does not report, so it is not checked here.
pub fn uses_host_memory(device: &str) -> bool {
    let d = device.to_ascii_lowercase();
    d.starts_with("cpu") || d.contains(":cpu") || d.starts_with("metal") || d.starts_with("mps")
}

/// Fails with [`Error::OutOfMemory`] when `needed` bytes exceed `available`.
pub fn ensure_fits(what: &str, needed: u128, available: Option<u64>) -> Result<()> {
    match available {
        Some(available) if needed > u128::from(available) => Err(Error::OutOfMemory {
            what: what.into(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   12345 kB\n";
        assert_eq!(parse_meminfo(text), Some(12345 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn host_memory_devices() {
        for d in ["cpu", "vulkan:cpu (llvmpipe)", "metal:0", "mps", "CPU"] {
            assert!(uses_host_memory(d), "{d}");
        }
        for d in ["cuda:0", "vulkan:0 (NVIDIA H200)"] {
            assert!(!uses_host_memory(d), "{d}");
        }
    }

    #[test]
    fn too_big_names_both_numbers() {
        let err = ensure_fits("the weights", 3 << 30, Some(1 << 30)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("3.00 GiB (3221225472 bytes)"), "{msg}");
        assert!(msg.contains("1.00 GiB (1073741824 bytes)"), "{msg}");
        assert!(ensure_fits("x", 1 << 30, Some(1 << 30)).is_ok());
        assert!(ensure_fits("x", u128::MAX, None).is_ok());
    }
}
