//! Store faults made for real: another process holding the database's write lock, and a data
//! directory on a small filesystem that can be filled up.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Holds the SQLite write lock (`BEGIN IMMEDIATE`) from another process (python3's sqlite3).
pub struct WriteLock {
    child: Child,
    output: std::io::Lines<BufReader<ChildStdout>>,
}

/// Holds the lock for at least `min_secs`, then until released.
const HOLDER: &str = r#"
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
began = time.monotonic()
print("locked", flush=True)
sys.stdin.readline()
time.sleep(max(0.0, float(sys.argv[2]) - (time.monotonic() - began)))
conn.execute("COMMIT")
print("released", flush=True)
"#;

impl WriteLock {
    /// Takes the write lock of `db`, held for at least `min` and then until `release`; `None`
    /// (after `skip`) without python3.
    pub fn hold(db: &Path, min: Duration) -> Option<WriteLock> {
        if !super::tools::have(super::tools::Tool::Python3) {
            return None;
        }
        let spawned = Command::new("python3")
            .args(["-c", HOLDER])
            .arg(db)
            .arg(min.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = spawned.expect("python3 starts");
        let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = output.next().and_then(Result::ok);
        assert_eq!(first.as_deref(), Some("locked"), "the lock holder failed");
        Some(WriteLock { child, output })
    }

    /// Whether the other process still holds the lock.
    pub fn held(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Lets go of the lock (once the minimum has passed) and waits until it is released.
    pub fn release(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"release\n").unwrap();
        drop(stdin);
        let last = self.output.next().and_then(Result::ok);
        assert_eq!(last.as_deref(), Some("released"), "the lock holder failed");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the lock holder failed: {status}");
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small tmpfs mounted for the length of a test (as root), unmounted when dropped, also
/// when the test panics.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created); `None` (after `skip`) when not root or
    /// the mount is refused.
    pub fn mount(path: &Path, bytes: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            super::skip("not root: a full filesystem needs a tmpfs mount");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let target = CString::new(path.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={bytes},mode=0755")).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            let error = std::io::Error::last_os_error();
            super::skip(&format!("cannot mount a tmpfs: {error}"));
            return None;
        }
        Some(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// Writes a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match file.write(&chunk) {
                Ok(_) => assert!(Instant::now() < deadline, "the filesystem never filled"),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the filesystem: {e}"),
            }
        }
        // The last pages too: smaller writes until not a byte fits.
        for size in [4096, 512, 1] {
            while file.write(&chunk[..size]).is_ok_and(|n| n > 0) {}
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path. Detached: files the server still holds open do
        // not keep the mount busy.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
