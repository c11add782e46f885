//! The OpenAPI 3.1 document of the HTTP API, served at `/api/openapi.json`. It is generated from
//! the handlers' `#[utoipa::path]` attributes and the `ToSchema` shapes of what they read and
//! answer, so it changes with them; `tests/openapi.rs` proves that it lists exactly the routes
//! the router serves.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{agents, console, executions, health, index, metrics, otlp, ws};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "AgentNexus",
        description = "Runs AI agents as local processes or Docker containers and makes every \
            execution observable. Errors are `{\"error\": {\"code\", \"message\"}}` with a stable \
            `code`. With API keys configured every `/api` route and `/ws` need one, as \
            `Authorization: Bearer <key>` or `?token=<key>` (a browser's `/ws` may offer it as the \
            subprotocol `agentnexus.bearer.<the key's UTF-8 bytes in hex>` beside `agentnexus`, \
            which keeps it out of the URL); with none (open mode, loopback \
            only) every caller is the local admin."
    ),
    paths(
        agents::create,
        agents::list,
        agents::get,
        agents::delete,
        agents::revenue,
        executions::submit,
        executions::list,
        executions::get,
        executions::cancel,
        executions::events,
        document,
        index::index,
        health::live,
        health::ready,
        metrics::text,
        metrics::json,
        ws::upgrade,
        otlp::traces,
        otlp::metrics,
        otlp::logs,
        console::execution_page,
        console::agents_page,
        console::status_page,
        console::asset,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &HealthAlias, &ClosedRuntimes, &OtlpErrors, &OpenModeRefusals),
    security(("bearer" = []), ("token" = [])),
    tags(
        (name = "agents", description = "Agent definitions and their revenue"),
        (name = "executions", description = "Runs of agents and their event streams"),
        (name = "websocket", description = "Live event streams"),
        (name = "health", description = "Probes"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "meta", description = "This document, and where everything is"),
        (name = "console", description = "The live web console: its pages and embedded assets"),
        (name = "telemetry", description = "OTLP/HTTP export of a running execution's telemetry, with the token the execution was given"),
    ),
)]
pub struct ApiDoc;

/// An API key goes in the `Authorization` header or, where a client cannot set headers (a
/// browser's WebSocket), in the `token` query parameter.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from the server's configuration"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same API key as a query parameter",
            ))),
        );
        components.add_security_scheme(
            "telemetry",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A running execution's telemetry token, as its OTEL_EXPORTER_OTLP_HEADERS give it",
                    ))
                    .build(),
            ),
        );
    }
}

/// `/health` is the same probe as `/health/live` (one handler, two routes).
struct HealthAlias;

impl Modify for HealthAlias {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(mut item) = openapi.paths.paths.get("/health/live").cloned() else {
            return;
        };
        if let Some(get) = item.get.as_mut() {
            get.operation_id = Some("health".into());
            get.summary = Some("Liveness (the same as `/health/live`)".into());
        }
        openapi.paths.paths.insert("/health".into(), item);
    }
}

/// A runtime refuses unknown fields (`deny_unknown_fields` on its enum), which utoipa does not
/// carry over to the variants of an internally tagged enum.
struct ClosedRuntimes;

impl Modify for ClosedRuntimes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schemas = openapi.components.as_mut().map(|c| &mut c.schemas);
        let Some(RefOr::T(Schema::OneOf(runtime))) = schemas.and_then(|s| s.get_mut("Runtime"))
        else {
            return;
        };
        for variant in &mut runtime.items {
            if let RefOr::T(Schema::Object(object)) = variant {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// Every OTLP route answers its errors alike (`otlp::ERROR_RESPONSES`), as a `google.rpc.Status`
/// in protobuf or JSON.
struct OtlpErrors;

impl Modify for OtlpErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let protobuf = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .build();
        let json = ObjectBuilder::new().schema_type(Type::Object).build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let Some(operation) = item.post.as_mut().filter(|_| path.starts_with("/v1/")) else {
                continue;
            };
            for (status, description) in otlp::ERROR_RESPONSES {
                let response = ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/x-protobuf",
                        ContentBuilder::new().schema(Some(protobuf.clone())).build(),
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(json.clone())).build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .insert(status.to_owned(), RefOr::T(response));
            }
        }
    }
}

/// In open mode (no API keys) every route first checks the request's `Host` and `Origin`
/// (`api/host.rs`), so every operation may answer with those two refusals.
struct OpenModeRefusals;

impl Modify for OpenModeRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let refusals = [
            (
                "421",
                "`forbidden_host` (open mode): the `Host` is not a loopback name or address, nor in `allowed_hosts`",
            ),
            (
                "403",
                "`forbidden_origin` (open mode): a browser `Origin` that is neither the server's own nor allowed",
            ),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in refusals {
                    let responses = &mut operation.responses.responses;
                    match responses.get_mut(status) {
                        Some(RefOr::T(known)) => {
                            known.description = format!("{}; {description}", known.description);
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => {
                            let content = ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build();
                            let response = ResponseBuilder::new()
                                .description(description)
                                .content("application/json", content)
                                .build();
                            responses.insert(status.to_owned(), RefOr::T(response));
                        }
                    }
                }
            }
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the document serializes")
});

/// This document.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "meta", operation_id = "openapi", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")),
)]
pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
