//! Control groups as the container of an execution: the agent is moved into a cgroup of its own
//! before it executes, and every process it starts stays there whatever it does (a new session,
//! a double fork), until the kernel removes it. So the cgroup lists exactly the execution's
//! processes, and killing the cgroup kills all of them.
//!
//! Two hierarchies are used: cgroup v2 (the unified one, pure or next to v1 hierarchies), and
//! the v1 `freezer` hierarchy. Both are found at run time from `/proc/self/mountinfo` and our
//! own cgroup; execution cgroups are created below ours, in `<our cgroup>/agentnexus/`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Below our own cgroup, the directory that holds one cgroup per execution.
const PARENT_DIR: &str = "agentnexus";
/// How long a kill may take before it is reported (a process in uninterruptible sleep can hold
/// it up); the kill goes on regardless ...
const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// ... until this long: then the execution is let go, and the cgroup stays with what is left.
const KILL_GIVE_UP: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2,
    /// The v1 `freezer` hierarchy: freezing is what makes a kill of every member reliable.
    V1Freezer,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V2 => "cgroup v2",
            Version::V1Freezer => "cgroup v1 freezer",
        }
    }
}

/// Where this runtime creates the cgroups of its executions.
#[derive(Debug)]
pub struct Hierarchy {
    version: Version,
    parent: PathBuf,
}

impl Hierarchy {
    /// Finds the hierarchy, creates our parent cgroup in it and checks that a process can be
    /// moved into a cgroup there; `Err` says why this host does not offer it.
    pub fn detect(version: Version) -> Result<Hierarchy, String> {
        let own = own_cgroup(version)?;
        let parent = own.join(PARENT_DIR);
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        // Unique: several runtimes may start at once in one process (tests do).
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let probe = parent.join(format!("probe-{}-{n}", std::process::id()));
        match std::fs::create_dir(&probe) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(format!("cannot create {}: {e}", probe.display()));
            }
            _ => {}
        }
        let moved = probe_move(&probe);
        let _ = std::fs::remove_dir(&probe);
        moved.map_err(|e| format!("cannot move a process into {}: {e}", probe.display()))?;
        Ok(Hierarchy { version, parent })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// The cgroup an execution gets (whether or not it exists).
    pub fn cgroup_of(&self, execution_id: &str) -> Cgroup {
        Cgroup {
            dir: self.parent.join(execution_id),
            version: self.version,
        }
    }
}

/// One execution's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
    version: Version,
}

impl Cgroup {
    /// A cgroup recorded by an earlier run of the runtime, if it still exists; its version is
    /// told by the files it has.
    pub fn open(dir: &Path) -> Option<Cgroup> {
        let version = if dir.join("cgroup.freeze").exists() || dir.join("cgroup.kill").exists() {
            Version::V2
        } else if dir.join("freezer.state").exists() {
            Version::V1Freezer
        } else {
            return None;
        };
        Some(Cgroup {
            dir: dir.to_owned(),
            version,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the cgroup (an existing one is reused: it can only be a leftover of the same
    /// execution, which a kill empties first) and opens the file that moves a process into it.
    pub fn create(&self) -> io::Result<Entry> {
        match std::fs::create_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.kill_blocking(),
            other => other?,
        }
        let file = File::options()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(Entry { file })
    }

    /// The processes in the cgroup now (empty once it is gone).
    pub fn members(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Sends `signal` to every member (a polite stop; members may start others meanwhile).
    pub fn signal(&self, signal: i32) {
        for pid in self.members() {
            // SAFETY: kill has no memory effects; a pid that just exited yields ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Kills every process in the cgroup and waits until it is empty. Blocks: run it where
    /// blocking is allowed.
    pub fn kill_blocking(&self) {
        let started = Instant::now();
        let mut reported = false;
        // cgroup.kill (v2, Linux 5.14+) kills every member atomically, even one forking now.
        let atomic = self.version == Version::V2
            && std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok();
        loop {
            let members = self.members();
            if members.is_empty() {
                return;
            }
            if !atomic {
                self.kill_frozen(&members);
            }
            if !reported && started.elapsed() > KILL_PATIENCE {
                tracing::warn!(cgroup = %self.dir.display(), ?members, "processes of an execution are slow to die");
                reported = true;
            }
            if started.elapsed() > KILL_GIVE_UP {
                tracing::error!(cgroup = %self.dir.display(), ?members, "processes of an execution cannot be killed");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Without an atomic kill: freeze the cgroup so nobody forks between listing and killing,
    /// kill every member, thaw so the kills take effect; the caller repeats until it is empty.
    fn kill_frozen(&self, members: &[i32]) {
        let frozen = self.freeze(true);
        let members = if frozen {
            self.members()
        } else {
            members.to_vec()
        };
        for pid in members {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if frozen {
            self.freeze(false);
        }
    }

    /// Freezes or thaws the cgroup; when freezing, waits (briefly) until every member is frozen.
    fn freeze(&self, freeze: bool) -> bool {
        let (file, value) = match (self.version, freeze) {
            (Version::V2, true) => ("cgroup.freeze", "1"),
            (Version::V2, false) => ("cgroup.freeze", "0"),
            (Version::V1Freezer, true) => ("freezer.state", "FROZEN"),
            (Version::V1Freezer, false) => ("freezer.state", "THAWED"),
        };
        if std::fs::write(self.dir.join(file), value).is_err() {
            return false;
        }
        if !freeze {
            return true;
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if self.is_frozen() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // A member in uninterruptible sleep cannot freeze yet: kill what is listed anyway.
        true
    }

    fn is_frozen(&self) -> bool {
        match self.version {
            Version::V2 => std::fs::read_to_string(self.dir.join("cgroup.events"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "frozen 1")),
            Version::V1Freezer => std::fs::read_to_string(self.dir.join("freezer.state"))
                .is_ok_and(|t| t.trim() == "FROZEN"),
        }
    }

    /// Kills every member, then removes the cgroup.
    pub fn kill_and_remove_blocking(&self) {
        self.kill_blocking();
        // The last member may still be leaving: an empty cgroup can be removed a moment later.
        for _ in 0..200 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "cannot remove an execution's cgroup");
    }

    /// `kill_and_remove_blocking` on a thread where blocking is allowed.
    pub async fn kill_and_remove(&self) {
        let cgroup = self.clone();
        let _ = tokio::task::spawn_blocking(move || cgroup.kill_and_remove_blocking()).await;
    }
}

/// The open `cgroup.procs` of a cgroup: writing to it in the child between fork and exec puts
/// the agent in the cgroup before it runs a single instruction of its own, so nothing it starts
/// can be outside.
pub struct Entry {
    file: File,
}

impl Entry {
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `fd`. Only a
/// write(2): safe between fork and exec.
pub fn enter(fd: RawFd) -> io::Result<()> {
    // "0" names the writing process itself.
    // SAFETY: writes one byte from a static buffer to a file descriptor.
    if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Forks a child that moves itself into `dir` and exits: whether this process may use the
/// hierarchy at all (permissions and kernel rules are only checked on a real move).
fn probe_move(dir: &Path) -> io::Result<()> {
    let procs = File::options().write(true).open(dir.join("cgroup.procs"))?;
    let fd = procs.as_raw_fd();
    // SAFETY: the child only calls write(2) and _exit(2), which are safe after a fork of a
    // multi-threaded process; the parent waits for that one pid only.
    unsafe {
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                let code = match enter(fd) {
                    Ok(()) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(libc::EIO) & 0xff,
                };
                libc::_exit(code)
            }
            pid => {
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                if !libc::WIFEXITED(status) {
                    return Err(io::Error::other("the probe process was killed"));
                }
                match libc::WEXITSTATUS(status) {
                    0 => Ok(()),
                    code => Err(io::Error::from_raw_os_error(code)),
                }
            }
        }
    }
}

/// Our own cgroup in the hierarchy of `version`, as a directory.
fn own_cgroup(version: Version) -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let mount = mounts
        .lines()
        .filter_map(Mount::parse)
        .find(|m| m.is(version))
        .ok_or_else(|| format!("no {} is mounted", version.name()))?;
    let own = cgroups
        .lines()
        .find_map(|line| cgroup_path(line, version))
        .ok_or_else(|| format!("this process is in no {} cgroup", version.name()))?;
    // The mount may show only a subtree (a container without a cgroup namespace).
    let relative = Path::new(own)
        .strip_prefix(&mount.root)
        .map_err(|_| format!("our {} cgroup {own} is outside its mount", version.name()))?;
    Ok(mount.point.join(relative))
}

/// The path of a `/proc/self/cgroup` line (`id:controllers:path`) if it is `version`'s.
fn cgroup_path(line: &str, version: Version) -> Option<&str> {
    let mut parts = line.splitn(3, ':');
    let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    let matches = match version {
        Version::V2 => id == "0" && controllers.is_empty(),
        Version::V1Freezer => controllers.split(',').any(|c| c == "freezer"),
    };
    matches.then_some(path)
}

/// A line of `/proc/self/mountinfo`, as much as is needed here.
#[derive(Debug, PartialEq)]
struct Mount {
    root: PathBuf,
    point: PathBuf,
    fs_type: String,
    super_options: String,
}

impl Mount {
    /// `id parent major:minor root point options [optional...] - type source super_options`
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let mut fields = before.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        let mut after = after.split(' ');
        let fs_type = after.next()?;
        let _source = after.next()?;
        let super_options = after.next().unwrap_or("");
        Some(Mount {
            root: PathBuf::from(unescape(root)),
            point: PathBuf::from(unescape(point)),
            fs_type: fs_type.to_owned(),
            super_options: super_options.to_owned(),
        })
    }

    fn is(&self, version: Version) -> bool {
        match version {
            Version::V2 => self.fs_type == "cgroup2",
            Version::V1Freezer => {
                self.fs_type == "cgroup" && self.super_options.split(',').any(|o| o == "freezer")
            }
        }
    }
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mountinfo_lines() {
        let v2 = Mount::parse(
            "35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate",
        )
        .unwrap();
        assert!(v2.is(Version::V2) && !v2.is(Version::V1Freezer));
        assert_eq!(v2.point, Path::new("/sys/fs/cgroup/unified"));
        let freezer = Mount::parse(
            "40 24 0:35 /docker/abc /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer",
        )
        .unwrap();
        assert!(freezer.is(Version::V1Freezer));
        assert_eq!(freezer.root, Path::new("/docker/abc"));
        let spaced = Mount::parse("1 2 0:1 / /mnt/with\\040space rw - ext4 /dev/x rw").unwrap();
        assert_eq!(spaced.point, Path::new("/mnt/with space"));
        assert_eq!(Mount::parse("garbage"), None);
    }

    #[test]
    fn reads_our_cgroup_lines() {
        assert_eq!(
            cgroup_path("0::/user.slice/x", Version::V2),
            Some("/user.slice/x")
        );
        assert_eq!(cgroup_path("6:freezer:/a", Version::V2), None);
        assert_eq!(cgroup_path("6:freezer:/a", Version::V1Freezer), Some("/a"));
        assert_eq!(
            cgroup_path("3:cpu,freezer:/b", Version::V1Freezer),
            Some("/b")
        );
        assert_eq!(cgroup_path("4:memory:/c", Version::V1Freezer), None);
    }
}
