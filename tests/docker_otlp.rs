//! Docker agents exporting telemetry: a container reaches the OTLP endpoint it is given
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`) with its token, and what it posts becomes `span` events of
//! its execution — on the host's network at the server's loopback address, on a bridge network
//! at `host.docker.internal` with the server bound where the bridge reaches it. Without Docker the test
//! prints `SKIPPED: <reason>` and passes, unless `AGENTNEXUS_REQUIRE_TOOLS` is set (CI).

mod common;

use agentnexus::config::{ApiKey, ConfigAgent};
use agentnexus::domain::Runtime;
use common::docker::{WAIT, docker_agent};
use common::{Client, TestServer};
use serde_json::json;

/// Posts one span as OTLP JSON with busybox `wget`, authenticated by the token from
/// `OTEL_EXPORTER_OTLP_HEADERS` (`authorization=Bearer%20<token>`).
const EXPORT_SCRIPT: &str = r#"
token="${OTEL_EXPORTER_OTLP_HEADERS#authorization=Bearer%20}"
span='{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"chat from a container","kind":3,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000001000000000","attributes":[{"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}}]}]}]}]}'
wget -q -O /tmp/answer --header "Authorization: Bearer $token" --header 'Content-Type: application/json' --post-data "$span" "$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces" || exit 3
echo "exported to $OTEL_EXPORTER_OTLP_ENDPOINT"
"#;

fn exporter_on(network_mode: &str) -> ConfigAgent {
    let mut agent = docker_agent("traced", EXPORT_SCRIPT);
    if let Runtime::Docker { network, .. } = &mut agent.runtime {
        *network = network_mode.into();
    }
    agent
}

#[tokio::test]
async fn a_container_on_the_host_network_exports_spans_to_its_execution() {
    if !common::docker::ready() {
        return;
    }
    let server = TestServer::start(vec![exporter_on("host")]).await;
    assert_exported(&server.client).await;
}

#[tokio::test]
async fn a_container_on_a_bridge_network_exports_through_host_docker_internal() {
    if !common::docker::ready() {
        return;
    }
    let port = common::free_port();
    let _server = TestServer::start_with(vec![exporter_on("bridge")], |c| {
        // Off loopback, so with an API key; the bridge reaches the host's every address.
        c.bind = format!("0.0.0.0:{port}").parse().unwrap();
        c.api_keys = vec![ApiKey {
            key: "bridge-test-key-0123456789".into(),
            user: "ops".into(),
            admin: true,
        }];
        c.otlp.endpoint = Some(format!("http://host.docker.internal:{port}"));
    })
    .await;
    let client =
        Client::new(&format!("http://127.0.0.1:{port}")).with_token("bridge-test-key-0123456789");
    assert_exported(&client).await;
}

/// Runs the exporting agent to its end and checks its span is in the stream.
async fn assert_exported(client: &Client) {
    let id = client.submit("traced", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    let events = client.all_events(&id).await;
    assert_eq!(execution["status"], "COMPLETED", "{events:?}");
    let spans: Vec<_> = events.iter().filter(|e| e["type"] == "span").collect();
    let exported = spans
        .iter()
        .find(|e| e["data"]["name"] == "chat from a container")
        .unwrap_or_else(|| panic!("the container's span is in the stream: {events:?}"));
    assert_eq!(exported["data"]["spanId"], "eee19b7ec3c1b174");
    assert_eq!(
        exported["data"]["attributes"]["gen_ai.request.model"],
        "gpt-4o"
    );
    // A span without a parent hangs from the execution's root span, recorded at the end.
    let root = spans
        .iter()
        .find(|e| e["data"]["parentSpanId"].is_null())
        .expect("the root span");
    assert_eq!(exported["data"]["parentSpanId"], root["data"]["spanId"]);
}
