//! The small volume at `/agentnexus` through which the input goes in and the output comes out.
//! The root filesystem is read-only and the `/tmp` tmpfs vanishes when the container stops,
//! while a volume is there before the start (to receive the input) and after the exit (to give
//! up the output), and is removed together with the container. Files go in and out as tar
//! archives, which is what the Engine API's archive endpoints speak.
//!
//! A fresh volume belongs to root. Before the start it receives `input.json`, readable by all
//! and writable by none (`AGENTNEXUS_INPUT`), and an `out` directory that anyone may write into
//! (sticky, like `/tmp`), where the non-root agent may write its output file
//! (`AGENTNEXUS_OUTPUT`).

use std::io::Read;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use futures_util::StreamExt;
use serde_json::Value;

use super::daemon::{CALL_TIMEOUT, CallError, Daemon, failure, timed_out};
use crate::domain::ExecError;
use crate::executor::MAX_OUTPUT_FILE;

/// Where the volume is mounted.
pub(super) const VOLUME: &str = "/agentnexus";
/// The input file the agent may read.
pub(super) const INPUT_FILE: &str = "/agentnexus/input.json";
/// The file the agent may write its output to.
pub(super) const OUTPUT_FILE: &str = "/agentnexus/out/output.json";

/// Why the output file gave no output.
#[derive(Debug)]
pub(super) enum OutputError {
    /// The agent left something there that is not an output: the execution fails for it.
    Invalid(String),
    /// The daemon stayed away past the limit.
    Unavailable(ExecError),
}

/// Puts the input file and the output directory on the volume of a created container.
pub(super) async fn prepare(docker: &Docker, id: &str, input: &[u8]) -> Result<(), ExecError> {
    let archive = initial_content(input).map_err(|e| {
        ExecError::new(
            "spawn_failed",
            format!("cannot pack the input for the container: {e}"),
        )
    })?;
    let upload = docker.upload_to_container(
        id,
        Some(UploadToContainerOptions {
            path: VOLUME.to_owned(),
            ..Default::default()
        }),
        bollard::body_full(archive.into()),
    );
    match tokio::time::timeout(CALL_TIMEOUT, upload).await {
        Err(_) => Err(timed_out("preparing the input and output volume")),
        Ok(Err(e)) => Err(failure(
            "spawn_failed",
            "cannot prepare the input and output volume",
            e,
        )),
        Ok(Ok(())) => Ok(()),
    }
}

/// The volume's initial content, as a tar archive.
fn initial_content(input: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut out = tar::Header::new_ustar();
    out.set_entry_type(tar::EntryType::Directory);
    out.set_mode(0o1777);
    out.set_size(0);
    archive.append_data(&mut out, "out/", std::io::empty())?;
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o444);
    file.set_size(input.len() as u64);
    archive.append_data(&mut file, "input.json", input)?;
    archive.into_inner()
}

/// The output file the agent wrote, if it wrote one. Read after the exit; an outage of the
/// daemon is waited out (up to the limit) like everywhere else.
pub(super) async fn read_output(daemon: &Daemon, id: &str) -> Result<Option<Value>, OutputError> {
    let mut outage = daemon.outage();
    let download = |docker: Docker| async move {
        let mut stream = docker.download_from_container(
            id,
            Some(DownloadFromContainerOptions {
                path: OUTPUT_FILE.to_owned(),
            }),
        );
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            archive.extend_from_slice(&chunk?);
            // The archive adds headers and padding around the file.
            if archive.len() > MAX_OUTPUT_FILE + 64 * 1024 {
                return Ok(Err(format!(
                    "the output file is over the limit of {MAX_OUTPUT_FILE} bytes"
                )));
            }
        }
        Ok::<_, BollardError>(Ok(archive))
    };
    let archive = match daemon
        .call(&mut outage, "reading the output file", download)
        .await
    {
        Ok(Ok(archive)) => archive,
        Ok(Err(too_big)) => return Err(OutputError::Invalid(too_big)),
        Err(CallError::Answered(BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        })) => return Ok(None),
        Err(CallError::Answered(e)) => {
            return Err(OutputError::Invalid(format!(
                "cannot read the output file: {e}"
            )));
        }
        Err(CallError::Unavailable(e)) => return Err(OutputError::Unavailable(e)),
    };
    let bytes = first_file(&archive).map_err(OutputError::Invalid)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| OutputError::Invalid(format!("the output file is not valid JSON: {e}")))
}

/// The contents of the single regular file an archive of one path holds; anything else there
/// (a directory, a link…) is not an output file.
fn first_file(archive: &[u8]) -> Result<Vec<u8>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read the output file's archive: {e}");
    let mut archive = tar::Archive::new(archive);
    let Some(entry) = archive.entries().map_err(unreadable)?.next() else {
        return Err("the output file's archive is empty".into());
    };
    let entry = entry.map_err(unreadable)?;
    if !entry.header().entry_type().is_file() {
        return Err("the output file is not a regular file".into());
    }
    if entry.size() > MAX_OUTPUT_FILE as u64 {
        return Err(format!(
            "the output file is {} bytes, over the limit of {MAX_OUTPUT_FILE}",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(MAX_OUTPUT_FILE as u64)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_of(name: &str, kind: tar::EntryType, body: &[u8]) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(body.len() as u64);
        archive.append_data(&mut header, name, body).unwrap();
        archive.into_inner().unwrap()
    }

    #[test]
    fn the_initial_content_holds_the_input_and_an_open_output_directory() {
        let input = br#"{"q": "life"}"#;
        let packed = initial_content(input).unwrap();
        let mut archive = tar::Archive::new(&packed[..]);
        let entries: Vec<(String, u32, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mode = e.header().mode().unwrap();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (path, mode, body)
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("out/".to_owned(), 0o1777, vec![]),
                ("input.json".to_owned(), 0o444, input.to_vec()),
            ]
        );
    }

    #[test]
    fn the_output_file_is_read_from_its_archive() {
        let body = br#"{"ok":true}"#;
        let archive = archive_of("output.json", tar::EntryType::Regular, body);
        assert_eq!(first_file(&archive).unwrap(), body);
        // A long name needs an extended header before the entry.
        let long = format!("{}/output.json", "d".repeat(150));
        let archive = archive_of(&long, tar::EntryType::Regular, body);
        assert_eq!(first_file(&archive).unwrap(), body);
    }

    #[test]
    fn anything_but_a_regular_file_is_refused() {
        let dir = archive_of("output.json/", tar::EntryType::Directory, b"");
        assert!(first_file(&dir).unwrap_err().contains("not a regular file"));
        let link = archive_of("output.json", tar::EntryType::Symlink, b"");
        assert!(first_file(&link).is_err());
        assert!(first_file(b"").is_err());
        assert!(first_file(&[7; 700]).is_err());
    }
}
