//! API errors: every failure becomes `{"error": {"code", "message"}}` with a stable code, and
//! request extractors whose rejections take the same shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::runtime::Error;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

impl ErrorBody {
    pub fn of(code: ErrorCode, message: String) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail { code, message },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    /// For people: the wording may change.
    message: String,
}

/// Every `code` an error may carry: the one list the responses and the document share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[schema(description = "A stable error code: clients branch on it, never on the message")]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    InvalidQuery,
    InvalidId,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthorized,
    Forbidden,
    ForbiddenHost,
    ForbiddenOrigin,
    NotFound,
    MethodNotAllowed,
    AgentNotFound,
    ExecutionNotFound,
    InputRejected,
    SinceBeyondEnd,
    Conflict,
    ShuttingDown,
    StoreUnavailable,
    TooManyConnections,
    TooManyRequests,
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
            Error::InvalidId(..) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidId),
            Error::AgentNotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::AgentNotFound),
            Error::ExecutionNotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::ExecutionNotFound),
            Error::InputRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InputRejected),
            Error::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
            Error::SinceBeyondEnd { .. } => (StatusCode::BAD_REQUEST, ErrorCode::SinceBeyondEnd),
            Error::Store(StoreError::Closed) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown)
            }
            Error::Store(StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
            // The database cannot be reached (for now): the request changed nothing and may be
            // repeated once readiness is back. The cause stays in the log.
            Error::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "the store cannot be reached while serving a request");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StoreUnavailable,
                    "the store cannot be reached; try again once the server is ready",
                );
            }
            Error::Store(e) => {
                // Details stay in the log; the client learns only that it was on our side.
                tracing::error!(error = %e, "store error while serving a request");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error; see the server log",
                );
            }
        };
        ApiError::new(status, code, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::bad_request(ErrorCode::InvalidJson, message)
            }
            JsonRejection::JsonDataError(_) => {
                ApiError::bad_request(ErrorCode::InvalidRequest, message)
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "expected a request body with Content-Type: application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "the request body is larger than the server accepts",
            ),
            other => ApiError::bad_request(ErrorCode::InvalidRequest, other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(ErrorCode::InvalidQuery, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A path segment that is not valid percent-encoded UTF-8: every path parameter is an id.
        ApiError::bad_request(ErrorCode::InvalidId, rejection.body_text())
    }
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(rejection: WebSocketUpgradeRejection) -> Self {
        let message = format!(
            "this endpoint takes WebSocket upgrades only: {}",
            rejection.body_text()
        );
        match rejection.status() {
            StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                message,
            ),
            status => ApiError::new(status, ErrorCode::InvalidRequest, message),
        }
    }
}

/// `axum::Json` with our error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with our error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` with our error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum`'s `WebSocketUpgrade` with our error shape (a plain GET of `/ws` is a 400 like any other).
pub struct Upgrade(pub WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let upgrade = WebSocketUpgrade::from_request_parts(parts, state).await?;
        Ok(Upgrade(upgrade))
    }
}

/// Everything but the probes while the server waits for its database at start.
pub async fn starting() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the server is starting: its database cannot be reached yet",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not support that method",
    )
}
