//! The container's output, as lines. It is read live from the attach stream, made before the
//! start, which carries the agent's bytes exactly. That stream ends the same way whether the
//! container closed its output or the connection was cut, so its end proves nothing: when it
//! ends while the container still runs, or when the daemon connection had trouble during the
//! run, the output is read (again) from the container's log, which the daemon keeps (the
//! executor pins the `json-file` driver) — until the daemon ends that read because the
//! container exited. The same read resumes a container after a restart of the runtime.
//!
//! Lines are matched by their position in each stream, not by time: each read of the log splits
//! it with the same splitter, and skips the first `seen.stdout_lines` stdout lines and
//! `seen.stderr_lines` stderr lines — exactly those already stored. Counting is exact where
//! timestamps are not: ours are taken on arrival, Docker's on write; many lines share a
//! millisecond; and `since` has only second precision. A partial line that was buffered when a
//! read broke off was never stored, so it is not counted and comes again, whole. The cost of a
//! break is reading the container's log once more. (The log is not byte-exact where the attach
//! stream is: the daemon stores bytes that are not UTF-8 as U+FFFD, also those of a character
//! that its 16 KiB split of a long line cuts in two; only lines read from the log after a break
//! are affected.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::LogsOptions;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::ResumePoint;
use super::daemon::{Daemon, Outage, RETRY_FIRST, State, gone, is_answer};
use crate::domain::{ExecError, LogStream};
use crate::executor::json_object_line;
use crate::executor::lines::{Line, LineSplitter};
use crate::stream::Recorder;

/// The container's whole output, once read: the last stdout line that was a JSON object.
pub(super) type LogsEnd = Result<Option<Value>, ExecError>;

/// How the live read ended.
pub(super) enum Collected {
    /// The log was read to the container's exit: complete.
    Complete(Option<Value>),
    /// The attach stream ended, and the container has exited: complete unless the connection
    /// to the daemon had trouble during the run (see `AttachEnded`).
    AttachEnded(Box<AttachEnded>),
}

/// What the attach stream delivered, kept until the run's end decides whether to trust it.
pub(super) struct AttachEnded {
    follower: LogFollower,
    read: Read,
}

/// Follows the output of a started container to its end, recording the lines after `seen`.
pub(super) struct LogFollower {
    daemon: Daemon,
    id: String,
    recorder: Arc<Recorder>,
    max_line_bytes: usize,
    /// Lines of each stream stored so far.
    seen: ResumePoint,
    /// Cleared when the store refuses: reading goes on, so that nothing waits on the output.
    recording: bool,
    /// Counts what was read, for the caller to tell a slow end from a stalled one.
    progress: Arc<AtomicU64>,
}

/// How one read ended.
enum ReadEnd {
    /// The stream ended.
    Ended,
    /// The connection broke.
    Broken(String),
    /// The daemon refused the read (a container being removed, or gone).
    Refused(String),
}

impl LogFollower {
    pub(super) fn new(
        daemon: Daemon,
        id: &str,
        seen: ResumePoint,
        recorder: Arc<Recorder>,
        max_line_bytes: usize,
    ) -> LogFollower {
        LogFollower {
            daemon,
            id: id.to_owned(),
            recorder,
            max_line_bytes,
            seen,
            recording: true,
            progress: Arc::default(),
        }
    }

    /// Grows while the follower reads.
    pub(super) fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// Reads the attach stream of a container started with it, then the log if needed.
    pub(super) async fn attached<S>(mut self, attach: S) -> Result<Collected, ExecError>
    where
        S: Stream<Item = Result<LogOutput, BollardError>>,
    {
        let mut read = Read::new(self.max_line_bytes);
        let end = self.consume(attach, &mut read, None).await;
        if let ReadEnd::Broken(why) | ReadEnd::Refused(why) = &end {
            tracing::info!(container = %self.id, reason = %why, "the attach stream broke off");
            self.daemon.note_trouble();
        }
        let mut outage = self.daemon.outage();
        match self.daemon.state(&self.id, &mut outage).await? {
            State::Exited { .. } => Ok(Collected::AttachEnded(Box::new(AttachEnded {
                follower: self,
                read,
            }))),
            State::Gone => Err(gone(&self.id)),
            State::Running => {
                tracing::info!(container = %self.id, "the attach stream ended while the container runs; reading its log");
                self.read_log().await.map(Collected::Complete)
            }
        }
    }

    /// Reads the container's log from its start until the container has exited.
    pub(super) async fn read_log(mut self) -> LogsEnd {
        let mut outage = self.daemon.outage();
        loop {
            let mut read = Read::new(self.max_line_bytes);
            let docker = self.daemon.client(&mut outage).await?;
            let log = docker.logs(
                &self.id,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            let end = self.consume(log, &mut read, Some(&mut outage)).await;
            self.progress.fetch_add(1, Ordering::Relaxed);
            let state = self.daemon.state(&self.id, &mut outage).await?;
            match (end, state) {
                (ReadEnd::Ended, State::Exited { .. }) => return Ok(self.finish(read).await),
                (_, State::Gone) => return Err(gone(&self.id)),
                (ReadEnd::Refused(why), State::Exited { .. }) => {
                    return Err(ExecError::new(
                        "container_lost",
                        format!("the log of the container {} cannot be read: {why}", self.id),
                    ));
                }
                (ReadEnd::Broken(why) | ReadEnd::Refused(why), _) => {
                    tracing::info!(container = %self.id, reason = %why, "the container's log broke off; reading it again");
                }
                (ReadEnd::Ended, State::Running) => {}
            }
            // Not every end of a read is a broken connection that the inspection above found
            // healed: a pause keeps a read that keeps failing at once from spinning.
            tokio::time::sleep(RETRY_FIRST).await;
        }
    }

    /// Reads a stream of output, recording the lines not stored yet.
    async fn consume<S>(
        &mut self,
        source: S,
        read: &mut Read,
        mut outage: Option<&mut Outage>,
    ) -> ReadEnd
    where
        S: Stream<Item = Result<LogOutput, BollardError>>,
    {
        let mut source = std::pin::pin!(source);
        let mut lines = Vec::new();
        while let Some(item) = source.next().await {
            self.progress.fetch_add(1, Ordering::Relaxed);
            let (stream, bytes) = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    (LogStream::Stdout, message)
                }
                Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) if is_answer(&e) => return ReadEnd::Refused(e.to_string()),
                Err(e) => return ReadEnd::Broken(e.to_string()),
            };
            if let Some(outage) = outage.as_deref_mut() {
                outage.ended();
            }
            read.splitter(stream).push(&bytes, &mut lines);
            let fresh = read.fresh(stream, std::mem::take(&mut lines), &mut self.seen);
            self.record(stream, fresh).await;
        }
        ReadEnd::Ended
    }

    /// The end of a complete read: its unterminated last lines are lines too.
    async fn finish(&mut self, mut read: Read) -> Option<Value> {
        let tails = [
            (LogStream::Stdout, read.stdout.finish()),
            (LogStream::Stderr, read.stderr.finish()),
        ];
        for (stream, tail) in tails {
            let lines = read.fresh(stream, tail.into_iter().collect(), &mut self.seen);
            self.record(stream, lines).await;
        }
        read.last_json
    }

    async fn record(&mut self, stream: LogStream, lines: Vec<Line>) {
        if !self.recording || lines.is_empty() {
            return;
        }
        let truncated = lines.iter().filter(|l| l.truncated).count() as u64;
        let texts = lines.into_iter().map(|l| l.text).collect();
        if self.recorder.logs(stream, texts).await.is_err() {
            self.recording = false;
        }
        if truncated > 0 {
            self.recorder.truncated_lines(truncated);
        }
    }
}

impl AttachEnded {
    /// Completes the output once the run is over: what the attach stream delivered, if the
    /// connection to the daemon had no trouble during the run; else what the log holds beyond.
    pub(super) async fn complete(self) -> LogsEnd {
        let AttachEnded { mut follower, read } = self;
        if follower.daemon.had_trouble() {
            tracing::info!(container = %follower.id, "the daemon connection had trouble during the run; checking the container's log for lines the attach stream lost");
            return follower.read_log().await;
        }
        Ok(follower.finish(read).await)
    }
}

/// One read of the output from its start.
struct Read {
    stdout: LineSplitter,
    stderr: LineSplitter,
    /// Lines of each stream this read has split.
    split: ResumePoint,
    last_json: Option<Value>,
}

impl Read {
    fn new(max_line_bytes: usize) -> Read {
        Read {
            stdout: LineSplitter::new(max_line_bytes),
            stderr: LineSplitter::new(max_line_bytes),
            split: ResumePoint::default(),
            last_json: None,
        }
    }

    fn splitter(&mut self, stream: LogStream) -> &mut LineSplitter {
        match stream {
            LogStream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    /// Of the lines this read just split, those not stored yet (advancing `seen` past them).
    /// Output candidates count whether stored now or before.
    fn fresh(
        &mut self,
        stream: LogStream,
        mut lines: Vec<Line>,
        seen: &mut ResumePoint,
    ) -> Vec<Line> {
        let (split, seen) = match stream {
            LogStream::Stderr => (&mut self.split.stderr_lines, &mut seen.stderr_lines),
            _ => {
                if let Some(json) = lines.iter().rev().find_map(|l| json_object_line(&l.text)) {
                    self.last_json = Some(json);
                }
                (&mut self.split.stdout_lines, &mut seen.stdout_lines)
            }
        };
        let stored = seen.saturating_sub(*split).min(lines.len() as u64) as usize;
        *split += lines.len() as u64;
        *seen = (*seen).max(*split);
        lines.drain(..stored);
        lines
    }
}
