//! Containment: what holds every process of an execution together, so that all of them are
//! measured while they live and all of them are gone when the execution ends — also those that
//! leave the agent's process group (a new session, a double fork). Chosen once at start:
//!
//! - `Cgroup`: each execution in a cgroup of its own (v2, or the v1 freezer), entered before the
//!   agent executes; killed with `cgroup.kill` or by freezing and killing every member, then
//!   removed. The path is recorded, so a restart after a crash kills what is left in it.
//! - `Subreaper`: each agent under a supervisor process that is a child subreaper (see
//!   `supervisor`); it kills everything under it when the agent ends, when asked, and when the
//!   runtime dies.
//! - `ProcessGroup`: the agent's process group only.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::cgroup::{self, Cgroup, Entry, Hierarchy, Version};
use super::proc_tree::{self, Members};
use super::supervisor;
use crate::config::ContainmentMode;
use crate::domain::ProcessGroup;

/// The variable every agent gets that names its execution; descendants inherit it, which lets a
/// restart find the processes a crashed runtime left behind.
pub const EXECUTION_ID_VAR: &str = "EXECUTION_ID";
/// After a crash, how long a leftover supervisor may take to kill what is under it.
const LEFTOVER_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum Containment {
    Cgroup(Hierarchy),
    Subreaper,
    ProcessGroup,
}

impl Containment {
    /// Picks the mechanism `mode` asks for (`Auto`: the best this host offers) and logs it; a
    /// mechanism asked for by name that the host does not offer is an error.
    pub fn choose(mode: ContainmentMode) -> Result<Containment, String> {
        let forced = |version: Version| {
            Hierarchy::detect(version)
                .map(Containment::Cgroup)
                .map_err(|e| format!("containment: {} is not available: {e}", version.name()))
        };
        let chosen = match mode {
            ContainmentMode::Auto => match Hierarchy::detect(Version::V2) {
                Ok(hierarchy) => Containment::Cgroup(hierarchy),
                Err(v2) => match Hierarchy::detect(Version::V1Freezer) {
                    Ok(hierarchy) => Containment::Cgroup(hierarchy),
                    Err(v1) => {
                        tracing::info!(cgroup_v2 = %v2, cgroup_v1 = %v1, "no usable cgroup");
                        Containment::Subreaper
                    }
                },
            },
            ContainmentMode::CgroupV2 => forced(Version::V2)?,
            ContainmentMode::CgroupV1 => forced(Version::V1Freezer)?,
            ContainmentMode::Subreaper => Containment::Subreaper,
            ContainmentMode::ProcessGroup => Containment::ProcessGroup,
        };
        match &chosen {
            Containment::Cgroup(h) => tracing::info!(
                mechanism = h.version().name(),
                parent = %h.parent().display(),
                "agent containment: one cgroup per execution"
            ),
            Containment::Subreaper => tracing::info!(
                mechanism = "subreaper",
                "agent containment: each agent under a subreaper supervisor"
            ),
            Containment::ProcessGroup => tracing::warn!(
                mechanism = "process group",
                "agent containment: process group only; processes that leave it are not stopped"
            ),
        }
        Ok(chosen)
    }

    /// Readies the containment of one execution and sets up `cmd` so that the agent starts
    /// inside it (in its own process group, in every mechanism).
    pub fn prepare(&self, execution_id: &str, cmd: &mut Command) -> io::Result<Scope> {
        cmd.process_group(0).kill_on_drop(false);
        let kind = match self {
            Containment::Cgroup(hierarchy) => {
                let cgroup = hierarchy.cgroup_of(execution_id);
                let entry = cgroup.create()?;
                let fd = entry.fd();
                // SAFETY: `cgroup::enter` is a single write(2), safe between fork and exec.
                unsafe {
                    cmd.pre_exec(move || cgroup::enter(fd));
                }
                ScopeKind::Cgroup {
                    cgroup,
                    entry: Some(entry),
                }
            }
            Containment::Subreaper => {
                supervisor::install(cmd);
                ScopeKind::Supervisor
            }
            Containment::ProcessGroup => ScopeKind::Group,
        };
        Ok(Scope {
            kind,
            leader: None,
            group: None,
            finished: false,
        })
    }

    pub async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let mut cmd = cmd;
        match self {
            Containment::Subreaper => supervisor::spawn(cmd).await,
            _ => cmd.spawn(),
        }
    }

    /// Stops whatever an execution that a crashed run of the runtime left running still has:
    /// everything in its cgroup (recorded, or where this runtime would have put it), its
    /// supervisor or group leader if it is still the same process, and every process that
    /// still carries the execution's id in its environment.
    pub async fn stop_leftover(&self, execution_id: &str, record: Option<&ProcessGroup>) {
        let mut cgroups: Vec<PathBuf> = record.and_then(|r| r.cgroup.clone()).into_iter().collect();
        if let Containment::Cgroup(hierarchy) = self {
            cgroups.push(hierarchy.cgroup_of(execution_id).dir().to_owned());
        }
        for dir in cgroups {
            if let Some(cgroup) = Cgroup::open(&dir) {
                tracing::info!(execution = %execution_id, cgroup = %dir.display(), "killing what a previous run left in an execution's cgroup");
                cgroup.kill_and_remove().await;
            }
        }
        if let Some(record) = record {
            stop_leftover_group(record).await;
        }
        // A process in the middle of `execve` shows an empty environment for a moment: only two
        // empty passes in a row, 10 ms apart, mean that nothing is left.
        let mut empty_passes = 0;
        for _ in 0..100 {
            let left = proc_tree::processes_with_env(EXECUTION_ID_VAR, execution_id);
            if left.is_empty() {
                empty_passes += 1;
                if empty_passes == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            empty_passes = 0;
            tracing::info!(execution = %execution_id, pids = ?left, "killing processes a previous run left behind");
            for pid in left {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The leader of a recorded group, if it is still the same process: a supervisor is asked to
/// kill everything under it (a plain agent dies of the same signal), then the group is killed.
async fn stop_leftover_group(record: &ProcessGroup) {
    let same = || proc_tree::start_ticks(record.group) == Some(record.started_ticks);
    if !same() {
        return;
    }
    tracing::info!(
        group = record.group,
        "stopping an agent left running by the previous run"
    );
    // SAFETY: kill has no memory effects; the pid was just checked to be the recorded process.
    unsafe { libc::kill(record.group, supervisor::KILL_REQUEST) };
    let deadline = tokio::time::Instant::now() + LEFTOVER_PATIENCE;
    while same() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While any member lives, the group's id cannot be given to another process: once the
    // leader is gone (not replaced by another process with its pid), what is left is ours.
    if same() || proc_tree::start_ticks(record.group).is_none() {
        // SAFETY: killpg has no memory effects.
        unsafe { libc::killpg(record.group, libc::SIGKILL) };
    }
}

/// One execution's containment, from before its agent starts until every process is gone.
/// Dropping it unfinished (the run was abandoned) kills everything it holds.
pub struct Scope {
    kind: ScopeKind,
    /// The process the runtime started (the agent, or its supervisor) while it may be signalled:
    /// until the runtime has reaped it, its pid cannot name another process.
    leader: Option<i32>,
    /// The agent's process group.
    group: Option<i32>,
    finished: bool,
}

enum ScopeKind {
    Cgroup {
        cgroup: Cgroup,
        /// Open until the agent is inside.
        entry: Option<Entry>,
    },
    Supervisor,
    Group,
}

impl Scope {
    /// The agent started as process `pid`: returns where it runs, for a restart after a crash.
    pub fn started(&mut self, pid: i32) -> Option<ProcessGroup> {
        self.leader = Some(pid);
        self.group = Some(pid);
        let cgroup = match &mut self.kind {
            ScopeKind::Cgroup { cgroup, entry } => {
                *entry = None;
                Some(cgroup.dir().to_owned())
            }
            _ => None,
        };
        Some(ProcessGroup {
            group: pid,
            started_ticks: proc_tree::start_ticks(pid)?,
            cgroup,
        })
    }

    /// Which processes to measure.
    pub fn members(&self) -> Members {
        let leader = self.group.unwrap_or(0);
        match &self.kind {
            ScopeKind::Cgroup { cgroup, .. } => Members::Cgroup(cgroup.dir().to_owned()),
            ScopeKind::Supervisor => Members::Descendants(leader),
            ScopeKind::Group => Members::Group(leader),
        }
    }

    /// The polite stop (SIGTERM), to every process that can be reached.
    pub fn terminate(&self) {
        match (&self.kind, self.leader) {
            (ScopeKind::Cgroup { cgroup, .. }, _) => cgroup.signal(libc::SIGTERM),
            (ScopeKind::Supervisor, Some(supervisor)) => {
                signal(supervisor, supervisor::STOP_REQUEST)
            }
            (ScopeKind::Group, Some(leader)) => signal_group(leader, libc::SIGTERM),
            _ => {}
        }
    }

    /// The forced stop, while the leader has not been reaped yet.
    pub async fn kill(&self) {
        match (&self.kind, self.leader) {
            (ScopeKind::Cgroup { cgroup, .. }, _) => {
                let cgroup = cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cgroup.kill_blocking()).await;
            }
            (ScopeKind::Supervisor, Some(supervisor)) => {
                signal(supervisor, supervisor::KILL_REQUEST)
            }
            (ScopeKind::Group, Some(leader)) => signal_group(leader, libc::SIGKILL),
            _ => {}
        }
    }

    /// The runtime has reaped the leader: its pid may name another process from now on.
    pub fn leader_reaped(&mut self) {
        self.leader = None;
    }

    /// After the leader has exited: kills whatever it left (a supervisor exits only after
    /// everything under it is gone) and removes the cgroup.
    pub async fn finish(mut self) {
        self.finished = true;
        match &self.kind {
            ScopeKind::Cgroup { cgroup, .. } => cgroup.kill_and_remove().await,
            ScopeKind::Supervisor => {}
            ScopeKind::Group => {
                if let Some(group) = self.group {
                    signal_group(group, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        match &self.kind {
            ScopeKind::Cgroup { cgroup, .. } => {
                // Blocking: not on the thread that drops (it may be an async worker).
                let cgroup = cgroup.clone();
                std::thread::spawn(move || cgroup.kill_and_remove_blocking());
            }
            ScopeKind::Supervisor => {
                if let Some(supervisor) = self.leader {
                    signal(supervisor, supervisor::KILL_REQUEST);
                }
            }
            ScopeKind::Group => {
                if let Some(group) = self.group {
                    signal_group(group, libc::SIGKILL);
                }
            }
        }
    }
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; callers pass a pid they have not reaped.
    unsafe { libc::kill(pid, signal) };
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory effects; a group that is already gone yields ESRCH.
    unsafe { libc::killpg(pgid, signal) };
}
