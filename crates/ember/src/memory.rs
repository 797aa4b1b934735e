//! How much memory a model will take, checked against what the machine has before anything is
//! allocated, so that a config or a file declaring a huge model fails with both numbers instead
//! of being killed by the OS half-way through a load.

use crate::error::{Error, Result};

/// Bytes of memory available to a new allocation: on Linux the kernel's `MemAvailable`,
/// lowered to what the process's control group may still take when it has a memory limit (a
/// container's limit is what a load must fit in, whatever the host has free); on macOS the
/// physical memory size (unified memory, shared with the GPU, where "available" counts
/// little of what the OS would free). Read through `sysinfo`. `None` where it cannot tell.
pub fn available_bytes() -> Option<u64> {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    if system.total_memory() == 0 {
        return None;
    }
    if cfg!(target_os = "macos") {
        return Some(system.total_memory());
    }
    let limit = system
        .cgroup_limits()
        .map(|c| CgroupMemory {
            limit: c.total_memory,
            used: c.rss,
        })
        .filter(|c| c.limit < system.total_memory());
    Some(available_within(system.available_memory(), limit))
}

/// A control group's memory limit and what its processes hold of it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The limit.
    pub limit: u64,
    /// Anonymous memory charged to the group (its page cache is reclaimable, as in
    /// `MemAvailable`).
    pub used: u64,
}

/// What a new allocation can take: the host's available memory, or less when a control
/// group's limit leaves less.
pub fn available_within(host_available: u64, cgroup: Option<CgroupMemory>) -> u64 {
    match cgroup {
        Some(c) => host_available.min(c.limit.saturating_sub(c.used)),
        None => host_available,
    }
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
    fn a_cgroup_limit_caps_the_host_memory() {
        let gib = 1u64 << 30;
        assert_eq!(available_within(20 * gib, None), 20 * gib);
        // A 4 GiB container holding 1 GiB on a host with 20 GiB free: 3 GiB.
        let c = CgroupMemory {
            limit: 4 * gib,
            used: gib,
        };
        assert_eq!(available_within(20 * gib, Some(c)), 3 * gib);
        // The host is the tighter bound; a group over its limit has nothing left.
        assert_eq!(available_within(2 * gib, Some(c)), 2 * gib);
        let over = CgroupMemory {
            limit: gib,
            used: 2 * gib,
        };
        assert_eq!(available_within(20 * gib, Some(over)), 0);
    }

    #[test]
    fn available_memory_is_known_and_within_the_cgroup_limit() {
        let available = available_bytes().expect("Linux and macOS report memory");
        assert!(available > 0);
        // cgroup v2, then v1: a number (not `max`) below the host's memory is a limit.
        let limit = [
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        if let Some(limit) = limit.filter(|&l| l < system.total_memory()) {
            assert!(available <= limit, "{available} > the cgroup limit {limit}");
        }
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
