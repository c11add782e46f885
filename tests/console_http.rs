//! The console as HTTP serves it: the page at every console location (and at `/` for a browser
//! only: API clients keep their JSON), the page's security headers, its embedded assets with
//! their entity tags, and a browser's WebSocket that carries its key as a subprotocol, never in
//! the URL. What the page does in a browser is `tests/console.rs`.

mod common;

use agentnexus::config::ApiKey;
use common::{TestServer, sh_agent};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

async fn get(url: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(accept) = accept {
        request = request.header(ACCEPT, accept);
    }
    request.send().await.unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_browser_gets_the_console_at_every_console_location_and_api_clients_keep_their_json() {
    let server = TestServer::start(vec![]).await;
    for path in ["/", "/executions/ex-123", "/agents", "/status"] {
        let page = get(&format!("{}{path}", server.url), Some(BROWSER_ACCEPT)).await;
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        let csp = header(&page, "content-security-policy").to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        let html = page.text().await.unwrap();
        assert!(html.contains(r#"<script type="module" src="/assets/app.js">"#));
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "no inline script or style: {html}"
        );
    }
    for accept in [None, Some("*/*"), Some("application/json")] {
        let index = get(&format!("{}/", server.url), accept).await;
        assert_eq!(
            header(&index, "content-type"),
            "application/json",
            "{accept:?}"
        );
        let body: Value = index.json().await.unwrap();
        assert_eq!(body["service"], "agentnexus");
        assert_eq!(body["api"], "/api");
    }
}

#[tokio::test]
async fn assets_are_embedded_small_typed_and_revalidated_by_their_entity_tag() {
    let server = TestServer::start(vec![]).await;
    let page = get(&format!("{}/", server.url), Some(BROWSER_ACCEPT))
        .await
        .text()
        .await
        .unwrap();
    let script = get(&format!("{}/assets/app.js", server.url), None).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        header(&script, CONTENT_TYPE.as_str()),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&script, "x-content-type-options"), "nosniff");
    let tag = header(&script, ETAG.as_str()).to_owned();
    assert!(tag.starts_with('"') && tag.len() > 10, "{tag}");
    let again = reqwest::Client::new()
        .get(format!("{}/assets/app.js", server.url))
        .header(IF_NONE_MATCH, &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
    let css = get(&format!("{}/assets/console.css", server.url), None).await;
    assert_eq!(header(&css, "content-type"), "text/css; charset=utf-8");

    // The page and everything under /assets/ add up to less than 200 KiB.
    let mut total = page.len();
    for name in agentnexus::api::console_asset_names() {
        let asset = get(&format!("{}/assets/{name}", server.url), None).await;
        assert_eq!(asset.status(), StatusCode::OK, "{name}");
        total += asset.bytes().await.unwrap().len();
    }
    assert!(total < 200 * 1024, "the console weighs {total} bytes");

    for missing in ["nope.js", "..%2Fconsole.rs", "index.html"] {
        let answer = get(&format!("{}/assets/{missing}", server.url), None).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{missing}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}

/// Opens `/ws` offering `protocols`; the protocol the server selected, or the refusal's status.
async fn open_ws(url: &str, protocols: &str) -> Result<Option<String>, u16> {
    let mut request = format!("{}/ws", url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, response)) => {
            let selected = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            ws.send(Message::text(r#"{"type": "ping"}"#)).await.unwrap();
            let pong = ws.next().await.unwrap().unwrap();
            assert!(pong.to_text().unwrap().contains("pong"), "{pong:?}");
            Ok(selected)
        }
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_browser_websocket_carries_its_key_as_a_subprotocol_and_gets_agentnexus_selected() {
    let key = "console-key-0123456789 with spaces/and=signs";
    let server = TestServer::start_with(vec![sh_agent("echo", "1", "cat")], |c| {
        c.api_keys = vec![ApiKey {
            key: key.into(),
            user: "ada".into(),
            admin: false,
        }];
    })
    .await;
    let bearer = format!("agentnexus.bearer.{}", hex::encode(key));
    assert_eq!(
        open_ws(&server.url, &format!("agentnexus, {bearer}")).await,
        Ok(Some("agentnexus".to_owned())),
        "the key-carrying protocol is never echoed back"
    );
    let wrong = format!("agentnexus.bearer.{}", hex::encode("another key"));
    assert_eq!(
        open_ws(&server.url, &format!("agentnexus, {wrong}")).await,
        Err(401)
    );
    assert_eq!(open_ws(&server.url, "agentnexus").await, Err(401));
    assert_eq!(
        open_ws(&server.url, "agentnexus, agentnexus.bearer.not-hex").await,
        Err(401)
    );
}

#[tokio::test]
async fn in_open_mode_a_browser_websocket_offering_agentnexus_gets_it() {
    let server = TestServer::start(vec![]).await;
    assert_eq!(
        open_ws(&server.url, "agentnexus").await,
        Ok(Some("agentnexus".to_owned()))
    );
}
