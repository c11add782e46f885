//! Ctrl-C while the CLI waits for an execution. An execution that this very command started
//! (`run --wait|--follow`) is cancelled on the first Ctrl-C, and the command goes on showing it
//! until its end, so the user sees it stop; a second Ctrl-C stops waiting at once. Someone else's
//! execution (`logs --follow`) is left alone: Ctrl-C only stops following it.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::client::{Client, Failure};
use super::output::note;

/// The exit code after Ctrl-C, the shell's convention for death by SIGINT (128 + 2).
pub const INTERRUPTED: u8 = 130;

pub fn interrupted() -> ExitCode {
    ExitCode::from(INTERRUPTED)
}

/// SIGINT caught from the moment this is made, so that a Ctrl-C right after a submission
/// cannot kill the process before it knows what to cancel.
pub struct Interrupts(Signal);

impl Interrupts {
    pub fn catch() -> anyhow::Result<Interrupts> {
        let signal = signal(SignalKind::interrupt()).context("cannot catch Ctrl-C")?;
        Ok(Interrupts(signal))
    }

    /// Resolves on the next Ctrl-C.
    pub async fn next(&mut self) {
        self.0.recv().await;
    }
}

/// How watching an execution this command started ended.
pub enum Watched<T> {
    /// It ended without Ctrl-C.
    Ended(T),
    /// Ctrl-C asked for its cancellation, and then it ended like this.
    Cancelled(T),
    /// A second Ctrl-C: it was asked to stop, and is left to do so.
    Detached,
}

/// Runs `watch` (which ends with the end of execution `id`) until it ends. On Ctrl-C asks the
/// server to cancel the execution and keeps watching; on a second Ctrl-C stops watching.
pub async fn cancel_on_interrupt<T>(
    client: &Client,
    id: &str,
    interrupts: &mut Interrupts,
    watch: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Watched<T>> {
    tokio::pin!(watch);
    tokio::select! {
        ended = &mut watch => return Ok(Watched::Ended(ended?)),
        () = interrupts.next() => {}
    }
    note(&format!(
        "interrupted: cancelling {id} (Ctrl-C again to stop waiting for it)"
    ));
    let (path, body) = (["executions", id, "cancel"], json!({}));
    let cancel = client.post(&path, &body);
    tokio::pin!(cancel);
    let mut asked = false;
    loop {
        tokio::select! {
            ended = &mut watch => return Ok(Watched::Cancelled(ended?)),
            answer = &mut cancel, if !asked => {
                asked = true;
                match answer {
                    // `conflict`: it had ended already, and watching shows how.
                    Ok(_) => {}
                    Err(Failure::Api { code, .. }) if code == "conflict" => {}
                    Err(e) => note(&format!("could not cancel {id}: {e}")),
                }
            }
            () = interrupts.next() => return Ok(Watched::Detached),
        }
    }
}
