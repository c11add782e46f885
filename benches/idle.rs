//! Idle server: resident memory after start-up and time from process start to ready (the
//! first successful `/health/live`). Runs the release binary ten times. Run:
//! `cargo bench --bench idle`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let mut ready_ms = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentnexus"))
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(a) = line.split("addr=").nth(1) {
                addr = Some(a.split_whitespace().next().unwrap().to_owned());
                break;
            }
        }
        let addr = addr.expect("the server logs its address");
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut response = String::new();
                let _ = s.read_to_string(&mut response);
                if response.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        ready_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(500));
        rss.push(rss_kib(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    ready_ms.sort_by(f64::total_cmp);
    rss.sort();
    println!(
        "idle: start to ready median {:.1} ms (min {:.1}, max {:.1}); resident memory after start median {:.1} MiB (min {:.1}, max {:.1})",
        ready_ms[5],
        ready_ms[0],
        ready_ms[9],
        rss[5] as f64 / 1024.0,
        rss[0] as f64 / 1024.0,
        rss[9] as f64 / 1024.0
    );
}
