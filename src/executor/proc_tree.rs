//! Resource samples of an execution's processes, read from `/proc`: their resident memory and
//! CPU use. Which processes belong to the execution is the containment's answer (`Members`):
//! the members of its cgroup, the descendants of its supervisor, or its process group.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// How to find the processes of one execution.
#[derive(Debug, Clone)]
pub enum Members {
    /// Every process in this cgroup.
    Cgroup(PathBuf),
    /// Every descendant of this supervisor. The supervisor itself shares the runtime's memory
    /// (it is a fork of it) and is not counted, but the CPU time of the children it reaped is.
    Descendants(i32),
    /// Every process in this process group.
    Group(i32),
}

pub struct TreeSampler {
    members: Members,
    ticks_per_sec: f64,
    page_size: u64,
    previous: (Instant, u64),
}

struct ProcStat {
    parent: i32,
    pgrp: i32,
    /// When the process started, in clock ticks since boot: with the pid, it names a process
    /// unambiguously (a pid can be reused; the pair cannot).
    start_ticks: u64,
    /// utime + stime: this process's own CPU time.
    own_cpu_ticks: u64,
    /// cutime + cstime: children that already exited and were reaped by this process.
    reaped_cpu_ticks: u64,
    rss_pages: u64,
}

/// What the members add up to at one moment.
#[derive(Default)]
struct Totals {
    found: bool,
    rss_pages: u64,
    cpu_ticks: u64,
}

impl Totals {
    fn add(&mut self, stat: &ProcStat) {
        self.found = true;
        self.rss_pages += stat.rss_pages;
        self.cpu_ticks += stat.own_cpu_ticks + stat.reaped_cpu_ticks;
    }
}

impl TreeSampler {
    pub fn new(members: Members, started: Instant) -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        TreeSampler {
            members,
            ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as u64 } else { 4096 },
            previous: (started, 0),
        }
    }

    /// Memory in bytes and CPU percent (of one core) since the previous sample; `None` once the
    /// execution has no process left.
    pub fn sample(&mut self) -> Option<(u64, f64)> {
        let totals = match &self.members {
            Members::Cgroup(dir) => cgroup_totals(dir),
            Members::Descendants(supervisor) => descendant_totals(*supervisor),
            Members::Group(pgid) => group_totals(*pgid),
        };
        if !totals.found {
            return None;
        }
        let now = Instant::now();
        let (then, previous_ticks) = self.previous;
        let elapsed = now.duration_since(then).as_secs_f64();
        // Processes that exited since the last sample take their ticks with them: never negative.
        let delta = totals.cpu_ticks.saturating_sub(previous_ticks) as f64 / self.ticks_per_sec;
        self.previous = (now, totals.cpu_ticks);
        let cpu = if elapsed > 0.0 {
            delta / elapsed * 100.0
        } else {
            0.0
        };
        Some((totals.rss_pages * self.page_size, cpu))
    }
}

fn cgroup_totals(dir: &std::path::Path) -> Totals {
    let mut totals = Totals::default();
    let members = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in members.lines() {
        if let Some(stat) = read_stat(pid.trim()) {
            totals.add(&stat);
        }
    }
    totals
}

fn group_totals(pgid: i32) -> Totals {
    let mut totals = Totals::default();
    for (_, stat) in all_processes() {
        if stat.pgrp == pgid {
            totals.add(&stat);
        }
    }
    totals
}

fn descendant_totals(supervisor: i32) -> Totals {
    let mut children: HashMap<i32, Vec<(i32, ProcStat)>> = HashMap::new();
    let mut root = None;
    for (pid, stat) in all_processes() {
        if pid == supervisor {
            root = Some(stat);
        } else {
            children.entry(stat.parent).or_default().push((pid, stat));
        }
    }
    let mut totals = Totals::default();
    let Some(root) = root else {
        return totals;
    };
    totals.found = true;
    totals.cpu_ticks += root.reaped_cpu_ticks;
    let mut pending = vec![supervisor];
    while let Some(parent) = pending.pop() {
        for (pid, stat) in children.remove(&parent).unwrap_or_default() {
            totals.add(&stat);
            pending.push(pid);
        }
    }
    totals
}

fn all_processes() -> impl Iterator<Item = (i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            let pid = name.parse().ok()?;
            Some((pid, read_stat(name)?))
        })
}

fn read_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    Some(ProcStat {
        parent: field(4)? as i32,
        pgrp: field(5)? as i32,
        own_cpu_ticks: (field(14)? + field(15)?).max(0) as u64,
        reaped_cpu_ticks: (field(16)? + field(17)?).max(0) as u64,
        rss_pages: field(24)?.max(0) as u64,
        start_ticks: field(22)?.max(0) as u64,
    })
}

/// The start time of process `pid` (clock ticks since boot), if it exists.
pub fn start_ticks(pid: i32) -> Option<u64> {
    read_stat(&pid.to_string()).map(|s| s.start_ticks)
}

/// Every process whose environment holds `NAME=value` exactly (as it was when the process
/// executed its program). A process in the middle of `execve` shows an empty environment until
/// its new stack is set up, so a caller that must not miss one looks more than once.
pub fn processes_with_env(name: &str, value: &str) -> Vec<i32> {
    let wanted = format!("{name}={value}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
                .then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_our_own_process_group() {
        // SAFETY: getpgrp has no preconditions.
        let pgid = unsafe { libc::getpgrp() };
        let mut sampler = TreeSampler::new(Members::Group(pgid), Instant::now());
        let (memory, cpu) = sampler.sample().expect("this test process is in its group");
        assert!(memory > 1024 * 1024, "{memory}");
        assert!(cpu >= 0.0);
        assert!(
            TreeSampler::new(Members::Group(i32::MAX - 7), Instant::now())
                .sample()
                .is_none()
        );
    }

    #[test]
    fn samples_the_descendants_of_a_process_but_not_the_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let mut sampler = TreeSampler::new(Members::Descendants(me), Instant::now());
        let (memory, _) = sampler.sample().expect("we exist");
        child.kill().unwrap();
        child.wait().unwrap();
        // A sleep is far smaller than this test process, which is not counted.
        assert!(memory > 0 && memory < 64 << 20, "{memory}");
    }

    #[test]
    fn finds_processes_by_their_environment() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("AGENTNEXUS_TEST_MARK", "found-by-env")
            .spawn()
            .unwrap();
        // `spawn` returns once the child's `execve` has begun, which may be before the kernel
        // has laid out its new environment: look until it is there.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut found = processes_with_env("AGENTNEXUS_TEST_MARK", "found-by-env");
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = processes_with_env("AGENTNEXUS_TEST_MARK", "found-by-env");
        }
        let other = processes_with_env("AGENTNEXUS_TEST_MARK", "someone-else");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, [child.id() as i32]);
        assert!(other.is_empty(), "{other:?}");
    }
}
