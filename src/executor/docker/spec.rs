//! What a container is made of: its image (pulled if missing) and its hardened configuration —
//! no network, read-only root filesystem with a small tmpfs at `/tmp`, every capability
//! dropped, `no-new-privileges`, a non-root user, memory (and equal swap), CPU and pids limits —
//! with the contract's environment and the labels that tie it to its execution.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::daemon::{CALL_TIMEOUT, failure, timed_out};
use super::volume::{INPUT_FILE, OUTPUT_FILE, VOLUME};
use super::{CONTAINER_USER, LABEL_AGENT, LABEL_EXECUTION, LABEL_USER};
use crate::domain::{ExecError, Runtime};
use crate::executor::{Job, MAX_ENV_INPUT};

/// Whether the image is there, pulling it if not. `Ok(false)`: stopped while pulling.
pub(super) async fn ensure_image(
    docker: &Docker,
    image: &str,
    stop: &CancellationToken,
) -> Result<bool, ExecError> {
    match tokio::time::timeout(CALL_TIMEOUT, docker.inspect_image(image)).await {
        Err(_) => return Err(timed_out("inspecting the image")),
        Ok(Ok(_)) => return Ok(true),
        Ok(Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        })) => {}
        Ok(Err(e)) => return Err(failure("image_not_found", "cannot inspect the image", e)),
    }
    // A pull can take long for a big image; the execution's timeout and cancel still
    // apply, through `stop`. Without a registry it fails at once.
    let mut pull = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        }),
        None,
        None,
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            item = pull.next() => match item {
                None => return Ok(true),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let why = match e {
                        BollardError::DockerResponseServerError { message, .. } => message,
                        BollardError::DockerStreamError { error } => error,
                        other => return Err(failure("image_not_found", "pulling the image failed", other)),
                    };
                    return Err(ExecError::new(
                        "image_not_found",
                        format!("image {image:?} is not present and cannot be pulled: {why}"),
                    ));
                }
            }
        }
    }
}

/// On a network of its own (a bridge), the container reaches the host as
/// `host.docker.internal`, as Docker Desktop provides: where an `otlp.endpoint` can name it.
/// Not with `none`, `host` (the host's own names apply) or another container's network, which
/// refuses host entries.
fn host_gateway(network: &str) -> Option<Vec<String>> {
    let own = !matches!(network, "none" | "host") && !network.starts_with("container:");
    own.then(|| vec!["host.docker.internal:host-gateway".to_owned()])
}

/// Creates the container of a job (not started); returns its id.
pub(super) async fn create(docker: &Docker, job: &Job) -> Result<String, ExecError> {
    let Runtime::Docker {
        image,
        cmd,
        env,
        memory_bytes,
        cpu_quota,
        pids_limit,
        network,
        tmp_bytes,
    } = &job.agent.runtime
    else {
        unreachable!("checked by the caller");
    };
    let input = job.input.to_string();
    let mut vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vars.extend(job.telemetry_env.iter().map(|(k, v)| format!("{k}={v}")));
    vars.push(format!("EXECUTION_ID={}", job.execution_id));
    vars.push(format!("AGENT_ID={}", job.agent.id));
    vars.push(format!("AGENTNEXUS_INPUT={INPUT_FILE}"));
    vars.push(format!("AGENTNEXUS_OUTPUT={OUTPUT_FILE}"));
    if input.len() <= MAX_ENV_INPUT {
        vars.push(format!("INPUT_DATA={input}"));
    }
    let labels = HashMap::from([
        (LABEL_EXECUTION.to_owned(), job.execution_id.clone()),
        (LABEL_AGENT.to_owned(), job.agent.id.clone()),
        (LABEL_USER.to_owned(), job.user_id.clone()),
    ]);
    let memory = i64::try_from(*memory_bytes).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        memory: Some(memory),
        // Swap limit = memory limit: the container gets no swap on top of its memory.
        memory_swap: Some(memory),
        nano_cpus: Some((cpu_quota * 1e9) as i64),
        pids_limit: Some(i64::try_from(*pids_limit).unwrap_or(i64::MAX)),
        network_mode: Some(network.clone()),
        extra_hosts: host_gateway(network),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,noexec,size={tmp_bytes},mode=1777"),
        )])),
        mounts: Some(vec![Mount {
            target: Some(VOLUME.to_owned()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }]),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        // The output is read back from the container's log (see `logs`): it must be one the
        // daemon can read back, whatever the daemon's default driver is.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: None,
        }),
        auto_remove: Some(false),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd: (!cmd.is_empty()).then(|| cmd.clone()),
        env: Some(vars),
        user: Some(CONTAINER_USER.to_owned()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(format!("agentnexus-{}", job.execution_id)),
        ..Default::default()
    };
    match tokio::time::timeout(CALL_TIMEOUT, docker.create_container(Some(options), body)).await {
        Err(_) => Err(timed_out("creating the container")),
        Ok(Err(e)) => Err(failure("spawn_failed", "cannot create the container", e)),
        Ok(Ok(created)) => Ok(created.id),
    }
}
