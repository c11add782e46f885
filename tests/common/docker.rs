//! The Docker engine for tests: whether it answers, and the local test image (built from
//! busybox without any registry on first use).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The image every Docker test runs: busybox, imported locally.
pub const TEST_IMAGE: &str = "agentnexus-test-busybox:1";

/// Whether Docker and the test image are there; prints why not, or fails when CI requires it.
pub fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match info {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(format!(
                    "the Docker daemon is not reachable: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return Err(format!("no docker command: {e}")),
        }
        let present = Command::new("docker")
            .args(["image", "inspect", TEST_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker/build-test-image.sh");
            let out = Command::new("sh").arg(script).arg(TEST_IMAGE).output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    return Err(format!(
                        "cannot build the test image {TEST_IMAGE}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Err(e) => return Err(format!("cannot run the image build script: {e}")),
            }
        }
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) => super::skip(why),
    }
}
