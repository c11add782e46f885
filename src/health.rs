//! The process's memory standing for readiness: resident memory against the limit that really
//! applies — the cgroup's when there is one (a container, a systemd unit), else a configured
//! limit, else the machine's memory.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryStanding {
    pub resident_bytes: u64,
    pub limit_bytes: u64,
    pub limit_source: &'static str,
}

impl MemoryStanding {
    pub fn used_percent(&self) -> f64 {
        self.resident_bytes as f64 / self.limit_bytes.max(1) as f64 * 100.0
    }
}

pub fn memory_standing(configured_limit: Option<u64>) -> Option<MemoryStanding> {
    let resident_bytes = metrics_process::collector::collect().resident_memory_bytes?;
    let (limit_bytes, limit_source) = match configured_limit {
        Some(limit) => (limit, "configured"),
        None => match cgroup_limit() {
            Some(limit) => (limit, "cgroup"),
            None => (machine_memory()?, "machine"),
        },
    };
    Some(MemoryStanding {
        resident_bytes,
        limit_bytes,
        limit_source,
    })
}

/// The tightest `memory.max` (cgroup v2) or `memory.limit_in_bytes` (v1) on our cgroup's path.
fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limits = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (root, file) = match controllers {
            "" => (PathBuf::from("/sys/fs/cgroup"), "memory.max"),
            c if c.split(',').any(|c| c == "memory") => (
                PathBuf::from("/sys/fs/cgroup/memory"),
                "memory.limit_in_bytes",
            ),
            _ => continue,
        };
        let mut dir = root.join(path.trim_start_matches('/'));
        loop {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                // "max", or v1's "unlimited" figure near i64::MAX, mean no limit here.
                if let Ok(limit) = text.trim().parse::<u64>() {
                    if limit < (1 << 60) {
                        limits.push(limit);
                    }
                }
            }
            if dir == root || !dir.pop() {
                break;
            }
        }
    }
    limits.into_iter().min()
}

fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_standing_is_read_from_the_system() {
        let standing = memory_standing(None).unwrap();
        assert!(standing.resident_bytes > 0);
        assert!(standing.limit_bytes > standing.resident_bytes);
        let tight = memory_standing(Some(1024)).unwrap();
        assert_eq!(tight.limit_source, "configured");
        assert!(tight.used_percent() > 100.0);
    }
}
