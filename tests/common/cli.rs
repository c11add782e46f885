//! Running the command-line client as a user would: a subprocess against a real server binary,
//! with its output captured, or on a pseudo-terminal where what a person at a terminal sees
//! matters (colour, Ctrl-C). The terminal is `openpty(3)` from `libc`, already a dependency:
//! the few calls needed (open, make it the child's controlling terminal, type a key, read what
//! was written) do not justify a terminal-emulation crate.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::ServerProcess;

/// Agents shared by the tests; each finishes well under a second.
pub const AGENTS: &str = r#"
[[agents]]
id = "echo"
name = "Echo"
price_wei = "5"
runtime = { type = "process", command = "sh", args = ["-c", "cat; echo; echo '{\"ok\": true}'"] }

[[agents]]
id = "fail"
name = "Fail"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "echo failing; exit 3"] }

[[agents]]
id = "lines"
name = "Lines"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2"] }

[[agents]]
id = "sleeper"
name = "Sleeper"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "echo started; sleep 10"] }
"#;

/// How long a command may take before the test gives up on it.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Setup {
    pub server: ServerProcess,
    pub dir: TempDir,
}

/// A server binary with `extra_toml` added to the test configuration.
pub fn start(extra_toml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&super::write_config(dir.path(), extra_toml));
    Setup { server, dir }
}

impl Setup {
    pub fn cli(&self, args: &[&str]) -> Output {
        finish(command(&self.server.url, args))
    }
}

/// The CLI with `args` and `--url`, shielded from the caller's environment.
pub fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
    command
        .args(args)
        .args(["--url", url])
        .env_remove("AGENTNEXUS_URL")
        .env_remove("AGENTNEXUS_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs the command to completion, failing the test instead of hanging if it never ends.
pub fn finish(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    collect(child)
}

/// Waits for a child started with piped output, for at most `PATIENCE` (then kills it).
pub fn collect(child: Child) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        // SAFETY: our own child, which has not been waited for.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("the command did not finish within {PATIENCE:?}")
    })
}

pub fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

pub fn json_stdout(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(output)))
}

/// Runs `args`, asserts exit code `expected`, and returns the output.
pub fn expect(setup: &Setup, args: &[&str], expected: i32) -> Output {
    let output = setup.cli(args);
    assert_eq!(
        code(&output),
        expected,
        "{args:?}\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Text that a reader thread keeps appending to, and that a test can wait on.
#[derive(Clone, Default)]
pub struct Transcript(Arc<(Mutex<Written>, Condvar)>);

#[derive(Default)]
struct Written {
    bytes: Vec<u8>,
    ended: bool,
}

impl Transcript {
    /// A transcript of everything `source` yields until its end (or an error: a terminal
    /// whose every other end is closed reads EIO).
    pub fn of(mut source: impl Read + Send + 'static) -> Transcript {
        let transcript = Transcript::default();
        let sink = transcript.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let read = source.read(&mut buf);
                let (written, changed) = &*sink.0;
                let mut written = written.lock().unwrap();
                match read {
                    Ok(n @ 1..) => written.bytes.extend_from_slice(&buf[..n]),
                    _ => written.ended = true,
                }
                changed.notify_all();
                if written.ended {
                    return;
                }
            }
        });
        transcript
    }

    /// A transcript of nothing, already ended.
    fn empty() -> Transcript {
        let transcript = Transcript::default();
        transcript.0.0.lock().unwrap().ended = true;
        transcript
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap().bytes).into_owned()
    }

    /// Waits until the transcript holds `wanted`.
    pub fn wait_for(&self, wanted: &str) {
        self.wait_until(&format!("{wanted:?}"), |w| {
            String::from_utf8_lossy(&w.bytes).contains(wanted)
        });
    }

    /// Waits until its source has ended.
    fn wait_end(&self) {
        self.wait_until("the end", |w| w.ended);
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Written) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let (written, changed) = &*self.0;
        let mut written = written.lock().unwrap();
        while !done(&written) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what} never came; got {:?}",
                String::from_utf8_lossy(&written.bytes)
            );
            written = changed.wait_timeout(written, left).unwrap().0;
        }
    }
}

/// Where a child on a terminal writes its stderr.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    Terminal,
    Pipe,
}

/// A child whose controlling terminal is a fresh pseudo-terminal, as when a person runs it:
/// its stdin is the terminal, so a Ctrl-C typed there reaches it as SIGINT, and so is its
/// stderr when asked. Its stdout is a pipe.
pub struct OnTerminal {
    child: Child,
    /// The other side of the terminal: what is typed goes in, what is shown comes out.
    keyboard: File,
    pub screen: Transcript,
    pub stdout: Transcript,
    pub stderr: Transcript,
}

impl OnTerminal {
    pub fn spawn(mut command: Command, stderr: Stderr) -> OnTerminal {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two new descriptors into the integers given; the other
        // arguments may be null.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened, and each is owned once.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let terminal = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        command
            .stdin(terminal(&slave))
            .stdout(Stdio::piped())
            .stderr(match stderr {
                Stderr::Terminal => terminal(&slave),
                Stderr::Pipe => Stdio::piped(),
            });
        // SAFETY: between fork and exec only async-signal-safe calls: a new session, whose
        // controlling terminal is the one on stdin, with this process in the foreground.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        // Only the child holds the terminal now, so the screen ends when the child does.
        drop(command);
        drop(slave);
        let keyboard = master.try_clone().unwrap();
        let stdout = Transcript::of(child.stdout.take().unwrap());
        let stderr = match child.stderr.take() {
            Some(pipe) => Transcript::of(pipe),
            None => Transcript::empty(),
        };
        OnTerminal {
            child,
            keyboard,
            screen: Transcript::of(master),
            stdout,
            stderr,
        }
    }

    /// Types Ctrl-C: the terminal sends SIGINT to its foreground process group.
    pub fn ctrl_c(&mut self) {
        self.keyboard.write_all(&[0x03]).unwrap();
    }

    /// Waits for the child's exit (at most `PATIENCE`) and for everything it wrote, and
    /// returns its exit code.
    pub fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for transcript in [&self.stdout, &self.stderr, &self.screen] {
                    transcript.wait_end();
                }
                return status.code().expect("exited, not killed by a signal");
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the command did not finish within {PATIENCE:?}\nscreen: {}\nstderr: {}",
                    self.screen.text(),
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        // A test that failed half-way leaves nothing running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
