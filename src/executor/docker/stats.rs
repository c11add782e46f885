//! Resource samples from the daemon's stats stream, which has a cadence of one second: a
//! shorter sampling interval cannot be honoured (one-shot calls are no faster — the daemon
//! answers a repeated one at its next collection), a longer one thins the stream out. A stream
//! that breaks is opened again; whether the container still runs is for the supervision to say.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;

use super::daemon::{Daemon, RETRY_FIRST};

/// The longest pause between two openings of the stats stream.
const STATS_RETRY_MAX: Duration = Duration::from_secs(2);
use crate::stream::Recorder;

/// Records the container's stats stream as `metrics` events, at most one per `interval`, until
/// aborted (when the container has ended).
pub(super) async fn record(
    daemon: Daemon,
    id: String,
    recorder: Arc<Recorder>,
    interval: Duration,
) {
    let mut sampler = StatsSampler::new();
    let mut last: Option<Instant> = None;
    let mut pause = RETRY_FIRST;
    // No limit here: the supervision decides when an outage has lasted too long.
    let mut outage = daemon.outage();
    loop {
        let Ok(docker) = daemon.client(&mut outage).await else {
            outage = daemon.outage();
            continue;
        };
        let mut stats = docker.stats(
            &id,
            Some(StatsOptions {
                stream: true,
                one_shot: false,
            }),
        );
        while let Some(Ok(stats)) = stats.next().await {
            pause = RETRY_FIRST;
            outage.ended();
            // Three quarters: the daemon's ticks jitter, and a sample a hair early must not be
            // dropped for a whole interval.
            if last.is_some_and(|t| t.elapsed() < interval * 3 / 4) {
                continue;
            }
            if let Some((memory, cpu)) = sampler.sample(&stats) {
                last = Some(Instant::now());
                if recorder.metrics(memory, cpu).await.is_err() {
                    return;
                }
            }
        }
        // The stream ends when the container stops, or breaks with the connection: it is
        // opened again, at a pace that slows while it keeps ending.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(STATS_RETRY_MAX);
    }
}

/// CPU and memory from consecutive stats, computed the way `docker stats` does.
struct StatsSampler {
    previous: Option<(u64, Option<u64>, Instant)>,
}

impl StatsSampler {
    fn new() -> StatsSampler {
        StatsSampler { previous: None }
    }

    /// Memory in bytes (the working set: usage less inactive file cache) and CPU percent of
    /// one core since the previous sample. The first sample is only a baseline: the CPU the
    /// container spent starting up, over the few milliseconds since, is no figure to report.
    fn sample(&mut self, stats: &ContainerStatsResponse) -> Option<(u64, f64)> {
        let memory = stats.memory_stats.as_ref()?;
        let usage = memory.usage?;
        let counters = memory.stats.as_ref();
        // cgroup v1 reports the hierarchy's figure as `total_inactive_file`, v2 as
        // `inactive_file`; `docker stats` prefers the former.
        let inactive = counters
            .and_then(|s| {
                s.get("total_inactive_file")
                    .or_else(|| s.get("inactive_file"))
            })
            .copied()
            .filter(|&i| i < usage)
            .unwrap_or(0);
        let cpu = stats.cpu_stats.as_ref()?;
        let total = cpu.cpu_usage.as_ref()?.total_usage?;
        let system = cpu.system_cpu_usage;
        let online = cpu
            .online_cpus
            .map(u64::from)
            .or_else(|| {
                cpu.cpu_usage
                    .as_ref()?
                    .percpu_usage
                    .as_ref()
                    .map(|p| p.len() as u64)
            })
            .filter(|&n| n > 0)
            .unwrap_or(1);
        let now = Instant::now();
        let (prev_total, prev_system, prev_at) = self.previous.replace((total, system, now))?;
        let used = total.saturating_sub(prev_total) as f64;
        let percent = match (prev_system, system) {
            (Some(before), Some(after)) if after > before => {
                used / (after - before) as f64 * online as f64 * 100.0
            }
            // Without the system figure, the wall clock stands in for it.
            _ => {
                let wall = now.duration_since(prev_at).as_nanos() as f64;
                if wall > 0.0 { used / wall * 100.0 } else { 0.0 }
            }
        };
        Some((usage - inactive, percent))
    }
}
