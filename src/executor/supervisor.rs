//! The containment where no cgroup can be used (an unprivileged container, a non-root laptop):
//! each agent runs under a supervisor process of its own, forked from the runtime just before
//! the agent, that is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`). Whatever the agent starts
//! — also in a new session, also by a double fork — stays below the supervisor: an orphan is
//! re-parented to its nearest subreaper ancestor, not to init. So the supervisor's descendants
//! are exactly the execution's processes, and it can kill all of them: it kills its children
//! until it has none left (a killed child's orphans become its children in turn).
//!
//! The supervisor exits, with the agent's exit status, only once every process under it is
//! gone: when the agent exits, when the runtime asks (`KILL_REQUEST`), and when the runtime
//! dies (the same signal is its parent-death signal), so a crash of the runtime does not leave
//! an execution's processes behind. It forwards `SIGTERM` to the agent's process group and to
//! the processes that left it.
//!
//! The supervisor runs between fork and exec of a multi-threaded process, where only
//! async-signal-safe calls are allowed: this module uses raw system calls on stack buffers, no
//! allocation, no locks, no panics.

use std::ffi::{c_int, c_ulong};
use std::io;
use std::sync::Mutex;

use libc::pid_t;

/// Asks a supervisor to kill everything under it and exit; also its parent-death signal.
pub const KILL_REQUEST: c_int = libc::SIGUSR1;
/// Asks a supervisor to pass a polite stop on to the agent and what it started.
pub const STOP_REQUEST: c_int = libc::SIGTERM;

/// Makes `cmd` start a supervisor with the agent as its only child. The process the runtime
/// gets back is the supervisor, and its exit status is the agent's. The agent leads a process
/// group of its own, without the supervisor: what the agent sends to its group (`kill -9 0`)
/// does not reach the supervisor.
pub fn install(cmd: &mut tokio::process::Command) {
    // SAFETY: getpid has no preconditions.
    let runtime = unsafe { libc::getpid() };
    // SAFETY: `become_supervisor` makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || become_supervisor(runtime));
    }
}

/// Spawns `cmd` from a thread that lives as long as the process. A supervisor's parent-death
/// signal follows the *thread* that forked it, and a worker thread of the async runtime may
/// end while the agent still runs.
pub async fn spawn(mut cmd: tokio::process::Command) -> io::Result<tokio::process::Child> {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);
    let handle = tokio::runtime::Handle::current();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // Children are reaped by the async runtime that spawned them.
        let _entered = handle.enter();
        let _ = reply.send(cmd.spawn());
    });
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
        if spawner.is_none() {
            let (sender, jobs) = std::sync::mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("agentnexus-spawner".into())
                .spawn(move || jobs.into_iter().for_each(|job| job()))?;
            *spawner = Some(sender);
        }
        let gone = || io::Error::other("the spawner thread is gone");
        spawner
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
    }
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// In the child between fork and exec: forks the agent (which returns, to be executed) and
/// turns this process into its supervisor (which never returns).
fn become_supervisor(runtime: pid_t) -> io::Result<()> {
    // SAFETY: async-signal-safe system calls on memory of this frame.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Blocked before the fork, so that no signal the supervisor waits for is lost.
        let waited = signal_set(&[libc::SIGCHLD, STOP_REQUEST, KILL_REQUEST]);
        let mut previous: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut previous) != 0 {
            return Err(io::Error::last_os_error());
        }
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // The agent: not a subreaper (fork does not pass that on), signals as before.
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
                Ok(())
            }
            agent => supervise(agent, runtime, &waited),
        }
    }
}

/// The supervisor's life: wait for the agent to exit or for a request, then kill everything
/// left below and exit like the agent did.
unsafe fn supervise(agent: pid_t, runtime: pid_t, waited: &libc::sigset_t) -> ! {
    // SAFETY (whole function): async-signal-safe system calls only.
    unsafe {
        // The pipes to the runtime, and the runtime's own files, are the agent's business.
        close_all_files();
        // Named for `ps`: otherwise it shows as a copy of the runtime (which it is, until exit).
        libc::prctl(
            libc::PR_SET_NAME,
            c"agentnexus-sup".as_ptr() as c_ulong,
            0,
            0,
            0,
        );
        // Stray signals must not end it (it would leave its processes to init), and handlers
        // inherited from the runtime must not run here.
        for signal in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGPIPE,
            libc::SIGALRM,
            libc::SIGUSR2,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, KILL_REQUEST as c_ulong, 0, 0, 0);
        let mut tree = Tree {
            me: libc::getpid(),
            group: agent,
            agent,
            status: None,
        };
        // The runtime may have died before the parent-death signal was armed.
        let mut kill = libc::getppid() != runtime;
        while !kill && tree.reap() && tree.status.is_none() {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            // Requests come from the runtime, or from its successor once it is gone; the same
            // signals sent by the agent to its own group (`kill 0`) are not requests.
            let signal = libc::sigwaitinfo(waited, &mut info);
            let requested = info.si_pid() == runtime || libc::getppid() != runtime;
            match signal {
                KILL_REQUEST if requested => kill = true,
                STOP_REQUEST if requested => tree.forward_stop(),
                _ => {}
            }
        }
        tree.kill_all();
        exit_like(tree.status)
    }
}

struct Tree {
    me: pid_t,
    /// The agent's process group (the agent leads it).
    group: pid_t,
    agent: pid_t,
    /// The agent's wait status, once it has exited.
    status: Option<c_int>,
}

impl Tree {
    /// Reaps every child that has exited; `false` once there are no children at all, which
    /// for a subreaper means no descendants at all.
    unsafe fn reap(&mut self) -> bool {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes to a local.
            match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
                0 => return true,
                pid if pid > 0 => {
                    if pid == self.agent {
                        self.status = Some(status);
                    }
                }
                _ => return io::Error::last_os_error().raw_os_error() != Some(libc::ECHILD),
            }
        }
    }

    /// The agent's group gets the stop as it would without a supervisor; the processes that
    /// left the group get it from here.
    unsafe fn forward_stop(&self) {
        // SAFETY: signals only.
        unsafe {
            libc::killpg(self.group, STOP_REQUEST);
            for_each_child(self.me, |pid, group| {
                if group != self.group {
                    libc::kill(pid, STOP_REQUEST);
                }
            });
        }
    }

    /// Kills children until there are none: each killed child's orphans are re-parented here
    /// and killed in the next round.
    unsafe fn kill_all(&mut self) {
        let child_exited = signal_set(&[libc::SIGCHLD]);
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        // SAFETY: signals, waitpid, and a timed wait for SIGCHLD.
        unsafe {
            loop {
                for_each_child(self.me, |pid, _| {
                    libc::kill(pid, libc::SIGKILL);
                });
                if !self.reap() {
                    return;
                }
                libc::sigtimedwait(&child_exited, std::ptr::null_mut(), &pause);
            }
        }
    }
}

/// Ends the supervisor the way the agent ended: the same exit code, or the same signal.
unsafe fn exit_like(status: Option<c_int>) -> ! {
    // SAFETY: async-signal-safe calls; the process ends here.
    unsafe {
        if let Some(status) = status {
            if libc::WIFEXITED(status) {
                libc::_exit(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                let signal = libc::WTERMSIG(status);
                // Dying of SIGSEGV like the agent must not write a core of the supervisor.
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(signal, libc::SIG_DFL);
                let set = signal_set(&[signal]);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::kill(libc::getpid(), signal);
                libc::_exit(128 + signal);
            }
        }
        libc::_exit(255)
    }
}

fn signal_set(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

unsafe fn close_all_files() {
    // SAFETY: closing descriptors has no memory effects.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) == 0 {
            return;
        }
        // Kernels before 5.9: one by one.
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20)
        } else {
            1024
        };
        for fd in 0..max as c_int {
            libc::close(fd);
        }
    }
}

/// Calls `f(pid, process group)` for every process whose parent is `parent`, read from /proc.
unsafe fn for_each_child(parent: pid_t, mut f: impl FnMut(pid_t, pid_t)) {
    // SAFETY: open/getdents64/close on stack buffers.
    unsafe {
        let dir = libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            let Some(mut entries) = usize::try_from(n).ok().and_then(|n| buf.get(..n)) else {
                break;
            };
            if entries.is_empty() {
                break;
            }
            while let Some((name, rest)) = next_entry(entries) {
                entries = rest;
                let Some(pid) = parse_decimal(name) else {
                    continue;
                };
                match parent_and_group(pid) {
                    Some((ppid, group)) if ppid == parent => f(pid, group),
                    _ => {}
                }
            }
        }
        libc::close(dir);
    }
}

/// Splits the first `linux_dirent64` record off `buf`: its name (without the NUL) and the rest.
fn next_entry(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    // d_ino (8 bytes), d_off (8), d_reclen (2), d_type (1), d_name (NUL-terminated).
    let length = u16::from_ne_bytes([*buf.get(16)?, *buf.get(17)?]) as usize;
    let record = buf.get(..length)?;
    let name = record.get(19..)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some((name.get(..end)?, buf.get(length..)?))
}

/// The parent and process group of `pid`, from `/proc/<pid>/stat`.
unsafe fn parent_and_group(pid: pid_t) -> Option<(pid_t, pid_t)> {
    let mut path = [0u8; 32];
    write_stat_path(pid, &mut path)?;
    let mut stat = [0u8; 256];
    // SAFETY: open/read/close with stack buffers; `path` is NUL-terminated.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
        libc::close(fd);
        n
    };
    parse_parent_and_group(stat.get(..usize::try_from(n).ok()?)?)
}

/// `pid (comm) state ppid pgrp …`: the command name may hold spaces and parentheses, so the
/// fields are counted from the last `)`. A stat cut short after `pgrp` still parses.
fn parse_parent_and_group(stat: &[u8]) -> Option<(pid_t, pid_t)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat
        .get(close + 1..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let _state = fields.next()?;
    let parent = parse_decimal(fields.next()?)?;
    let group = parse_decimal(fields.next()?)?;
    Some((parent, group))
}

fn parse_decimal(text: &[u8]) -> Option<pid_t> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0 as pid_t, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(pid_t::from(digit))
    })
}

/// Writes `/proc/<pid>/stat` and a NUL into `out`.
fn write_stat_path(pid: pid_t, out: &mut [u8; 32]) -> Option<()> {
    let mut digits = [0u8; 12];
    let mut n = pid;
    let mut len = 0;
    loop {
        *digits.get_mut(len)? = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    let mut push = |b: u8| -> Option<()> {
        *out.get_mut(at)? = b;
        at += 1;
        Some(())
    };
    for &b in b"/proc/" {
        push(b)?;
    }
    for i in (0..len).rev() {
        push(*digits.get(i)?)?;
    }
    for &b in b"/stat\0" {
        push(b)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parent_and_group_of_a_stat_line() {
        assert_eq!(
            parse_parent_and_group(b"4242 (sh) S 17 4242 17 0 -1 4194560 100"),
            Some((17, 4242))
        );
        assert_eq!(
            parse_parent_and_group(b"7 (a) b (c)) R 1 7 1"),
            Some((1, 7))
        );
        assert_eq!(parse_parent_and_group(b"7 (x) S"), None);
        assert_eq!(parse_parent_and_group(b"no parenthesis"), None);
    }

    #[test]
    fn parses_decimals_without_overflow() {
        assert_eq!(parse_decimal(b"123"), Some(123));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b"99999999999"), None);
    }

    #[test]
    fn writes_stat_paths() {
        let mut out = [0u8; 32];
        write_stat_path(31337, &mut out).unwrap();
        assert!(out.starts_with(b"/proc/31337/stat\0"));
        write_stat_path(0, &mut out).unwrap();
        assert!(out.starts_with(b"/proc/0/stat\0"));
    }

    #[test]
    fn finds_our_own_children_in_proc() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut found = Vec::new();
        // SAFETY: reads /proc.
        unsafe { for_each_child(libc::getpid(), |pid, _| found.push(pid)) };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&(child.id() as pid_t)), "{found:?}");
    }

    #[test]
    fn splits_directory_records() {
        let mut record = vec![0u8; 24];
        record[16..18].copy_from_slice(&24u16.to_ne_bytes());
        record[19..22].copy_from_slice(b"123");
        let mut two = record.clone();
        two.extend_from_slice(&record);
        let (name, rest) = next_entry(&two).unwrap();
        assert_eq!(name, b"123");
        assert_eq!(next_entry(rest).unwrap().0, b"123");
        assert_eq!(next_entry(&record[..10]), None);
    }
}
