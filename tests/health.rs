//! Health probes: the spec's shapes, and every documented state reproduced for real.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, sh_agent};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Docker on this machine is required when `AGENTNEXUS_REQUIRE_TOOLS` is set (CI sets it).
fn docker_socket_available() -> bool {
    std::path::Path::new("/var/run/docker.sock").exists()
        || common::skip("no Docker daemon socket at /var/run/docker.sock")
}

fn assert_report_shape(body: &Value) {
    assert!(body["status"].is_string(), "{body}");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(
        timestamp.ends_with('Z') && timestamp.len() == 24,
        "{timestamp}"
    );
    assert!(body["uptime"].is_u64(), "{body}");
    for (name, check) in body["checks"].as_object().unwrap() {
        assert!(
            matches!(check["status"].as_str(), Some("ok" | "error")),
            "{name}: {check}"
        );
        assert!(check["message"].is_string(), "{name}: {check}");
    }
}

async fn metric_value(server: &TestServer, name: &str) -> Option<f64> {
    let text = common::scrape(&server.url).await;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn liveness_has_the_spec_shape_and_needs_nothing() {
    let server = TestServer::start(vec![]).await;
    for path in ["/health", "/health/live"] {
        let (status, body) = server.client.get(path).await;
        assert_eq!(status, StatusCode::OK);
        assert_report_shape(&body);
        assert_eq!(body["status"], "healthy");
        assert_eq!(
            body["checks"]["service"],
            json!({"status": "ok", "message": "Service is running"})
        );
    }
}

#[tokio::test]
async fn readiness_is_healthy_with_every_check_of_the_spec() {
    if !docker_socket_available() {
        return;
    }
    let server = TestServer::start(vec![]).await;
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_report_shape(&body);
    assert_eq!(body["status"], "healthy", "{body}");
    let checks = &body["checks"];
    assert_eq!(
        checks["database"],
        json!({"status": "ok", "message": "Database connection healthy"})
    );
    assert_eq!(
        checks["docker"],
        json!({"status": "ok", "message": "Docker daemon available"})
    );
    assert_eq!(checks["memory"]["message"], "Memory usage normal");
    for field in ["heapUsedPercent", "heapUsedMB", "heapTotalMB"] {
        let text = checks["memory"]["details"][field].as_str().unwrap();
        assert!(text.parse::<f64>().is_ok(), "{field}: {text}");
    }
    assert_eq!(
        checks["websocket"]["message"],
        "WebSocket server operational"
    );
    assert_eq!(checks["websocket"]["details"]["activeConnections"], 0);
    assert_eq!(
        checks["bus"],
        json!({"status": "ok", "message": "In-process event bus"})
    );
    assert_eq!(
        metric_value(&server, "agentnexus_nats_connected").await,
        None,
        "only a server on NATS has the NATS gauge"
    );
    assert_eq!(
        metric_value(&server, "agentnexus_docker_healthy").await,
        Some(1.0)
    );
    assert_eq!(
        metric_value(&server, "agentnexus_database_healthy").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_database_that_is_gone_makes_readiness_unhealthy_but_not_liveness() {
    let server = TestServer::start_with(vec![], |c| c.docker.enabled = false).await;
    let data = server.dir.path().join("data");
    let moved = server.dir.path().join("moved");
    // The volume under the database disappears (as when a mount is lost).
    std::fs::rename(&data, &moved).unwrap();
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_report_shape(&body);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(
        body["checks"]["database"],
        json!({"status": "error", "message": "Database connection failed"})
    );
    assert_eq!(
        metric_value(&server, "agentnexus_database_healthy").await,
        Some(0.0)
    );
    let (status, _) = server.client.get("/health/live").await;
    assert_eq!(status, StatusCode::OK);

    std::fs::rename(&moved, &data).unwrap();
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "healthy");
}

#[tokio::test]
async fn a_docker_socket_pointing_at_nothing_makes_readiness_degraded() {
    let server = TestServer::start_with(vec![], |c| {
        c.docker.host = Some("unix:///nonexistent/docker.sock".into());
    })
    .await;
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_report_shape(&body);
    assert_eq!(body["status"], "degraded");
    assert_eq!(
        body["checks"]["docker"],
        json!({"status": "error", "message": "Docker daemon unavailable"})
    );
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert_eq!(
        metric_value(&server, "agentnexus_docker_healthy").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_hung_docker_daemon_cannot_hang_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    // Accepts connections and never answers.
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let server = TestServer::start_with(vec![], |c| {
        c.docker.host = Some(format!("unix://{}", socket.display()));
        c.health.check_timeout_ms = 300;
        c.health.expose_details = true;
    })
    .await;
    let started = Instant::now();
    let (status, body) = server.client.get("/health/ready").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "readiness took {took:?}");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["docker"]["status"], "error");
    assert!(
        body["checks"]["docker"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{body}"
    );
    hold.abort();
}

#[tokio::test]
async fn docker_not_configured_is_said_and_does_not_degrade() {
    let server = TestServer::start_with(vec![], |c| c.docker.enabled = false).await;
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(
        body["checks"]["docker"],
        json!({"status": "ok", "message": "Docker not configured"})
    );
    assert_eq!(
        metric_value(&server, "agentnexus_docker_healthy").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn memory_over_ninety_percent_of_the_limit_is_degraded() {
    let server = TestServer::start_with(vec![], |c| {
        c.docker.enabled = false;
        c.health.memory_limit_bytes = Some(4 * 1024 * 1024);
    })
    .await;
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    let memory = &body["checks"]["memory"];
    assert_eq!(memory["status"], "error");
    assert_eq!(memory["message"], "Memory usage high");
    assert_eq!(memory["details"]["heapTotalMB"], "4.00");
    assert!(
        memory["details"]["heapUsedPercent"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 90.0
    );
}

#[tokio::test]
async fn readiness_fails_as_soon_as_shutdown_begins() {
    let mut server = TestServer::start_with(vec![sh_agent("slow", "1", "sleep 1")], |c| {
        c.docker.enabled = false;
        c.shutdown_grace_secs = 10;
    })
    .await;
    let client = server.client.clone();
    let id = client.submit("slow", json!({})).await;
    client
        .wait_status(&id, "RUNNING", Duration::from_secs(10))
        .await;
    let stopping = tokio::spawn(server.server.take().unwrap().shutdown());

    // While the running execution drains, the API still answers but readiness says no.
    let mut saw_draining = false;
    for _ in 0..50 {
        let (status, body) = client.get("/health/ready").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["status"], "unhealthy");
            assert_eq!(body["checks"]["server"]["status"], "error");
            saw_draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_draining, "readiness never failed during shutdown");
    let (status, body) = client
        .post("/api/executions", json!({"agentId": "slow"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down");
    assert_eq!(client.execution(&id).await["status"], "RUNNING");
    stopping.await.unwrap();

    // The running execution was allowed to finish: see it after a restart on the same data.
    let mut config = common::test_config(server.dir.path());
    config.docker.enabled = false;
    let restarted = agentnexus::server::Server::start(config).await.unwrap();
    let client = common::Client::new(&format!("http://{}", restarted.addr()));
    assert_eq!(client.execution(&id).await["status"], "COMPLETED");
}
