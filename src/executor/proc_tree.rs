//! Resource samples of a process tree, read from `/proc`: the resident memory and CPU use of
//! every process in the agent's process group.

use std::time::Instant;

pub struct TreeSampler {
    pgid: i32,
    ticks_per_sec: f64,
    page_size: u64,
    previous: (Instant, u64),
}

struct ProcStat {
    pgrp: i32,
    /// When the process started, in clock ticks since boot: with the pid, it names a process
    /// unambiguously (a pid can be reused; the pair cannot).
    start_ticks: u64,
    /// utime + stime + cutime + cstime: includes children that already exited and were reaped.
    cpu_ticks: u64,
    rss_pages: u64,
}

impl TreeSampler {
    pub fn new(pgid: i32, started: Instant) -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        TreeSampler {
            pgid,
            ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as u64 } else { 4096 },
            previous: (started, 0),
        }
    }

    /// Memory in bytes and CPU percent (of one core) since the previous sample; `None` once the
    /// group has no process left.
    pub fn sample(&mut self) -> Option<(u64, f64)> {
        let mut rss_pages = 0;
        let mut cpu_ticks = 0;
        let mut found = false;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Some(stat) = read_stat(pid) else { continue };
            if stat.pgrp == self.pgid {
                found = true;
                rss_pages += stat.rss_pages;
                cpu_ticks += stat.cpu_ticks;
            }
        }
        if !found {
            return None;
        }
        let now = Instant::now();
        let (then, previous_ticks) = self.previous;
        let elapsed = now.duration_since(then).as_secs_f64();
        // Processes that exited since the last sample take their ticks with them: never negative.
        let delta = cpu_ticks.saturating_sub(previous_ticks) as f64 / self.ticks_per_sec;
        self.previous = (now, cpu_ticks);
        let cpu = if elapsed > 0.0 {
            delta / elapsed * 100.0
        } else {
            0.0
        };
        Some((rss_pages * self.page_size, cpu))
    }
}

fn read_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    Some(ProcStat {
        pgrp: field(5)? as i32,
        cpu_ticks: (field(14)? + field(15)? + field(16)? + field(17)?).max(0) as u64,
        rss_pages: field(24)?.max(0) as u64,
        start_ticks: field(22)?.max(0) as u64,
    })
}

/// The start time of process `pid` (clock ticks since boot), if it exists.
pub fn start_ticks(pid: i32) -> Option<u64> {
    read_stat(&pid.to_string()).map(|s| s.start_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_our_own_process_group() {
        // SAFETY: getpgrp has no preconditions.
        let pgid = unsafe { libc::getpgrp() };
        let mut sampler = TreeSampler::new(pgid, Instant::now());
        let (memory, cpu) = sampler.sample().expect("this test process is in its group");
        assert!(memory > 1024 * 1024, "{memory}");
        assert!(cpu >= 0.0);
        assert!(
            TreeSampler::new(i32::MAX - 7, Instant::now())
                .sample()
                .is_none()
        );
    }
}
