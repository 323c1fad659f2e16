//! The one error shape of the v1 API and its mapping from the system's errors.
//!
//! `{"error": "<snake_case_code>", "message": "...", "details": [{"path", "message"}]}`.
//! 5xx bodies are opaque: the cause is logged, not returned.

use actix::MailboxError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use loads_actors::domain::{ConflictCode, DomainError, FieldError, LimitCode, RefusalCode};
use loads_actors::metrics::IngestError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every v1 error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `validation_failed`.
    pub error: ErrorCode,
    /// What went wrong, for a human.
    pub message: String,
    /// One entry per problem field.
    pub details: Vec<FieldError>,
}

/// Every code an error response carries: the request's own, or the domain's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorCode {
    /// Something about the request, or the broker answering it.
    Request(RequestCode),
    /// A conflict with the current state (409).
    Conflict(ConflictCode),
    /// A limit that refuses the request for now (429).
    Limit(LimitCode),
    /// A well-formed request that is refused (422).
    Refused(RefusalCode),
}

/// The codes of problems with a request itself, or with the broker answering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestCode {
    /// A well-formed document that is invalid; every problem in `details` (422).
    ValidationFailed,
    /// No such thing, or no such route (404).
    NotFound,
    /// An id in the path that is not a UUID (400).
    InvalidId,
    /// A malformed or out-of-range query parameter (400).
    InvalidQuery,
    /// A body that cannot be read, is not UTF-8 or is empty (400).
    InvalidBody,
    /// A JSON body with a syntax error (400).
    InvalidJson,
    /// A TOML or YAML body with a syntax error, or one too slow to parse (400).
    InvalidDocument,
    /// A body over `server.max_body_bytes` (413).
    PayloadTooLarge,
    /// A body of a type the route does not take (415).
    UnsupportedMediaType,
    /// A websocket route asked without a websocket handshake (400).
    NotWebsocket,
    /// A method the route does not take (405).
    MethodNotAllowed,
    /// No bearer token, or one that is not valid (401).
    Unauthorized,
    /// A token whose role does not allow the request, or a relay of another run (403).
    Forbidden,
    /// A `Host` not in `server.allowed_hosts` (421).
    HostNotAllowed,
    /// An `Origin` not in `server.allowed_origins` (403).
    OriginNotAllowed,
    /// A cross-origin request refused (403).
    CorsRefused,
    /// A delivery that did not arrive in time (408).
    RequestTimeout,
    /// A run that is already over (loads v2 API, 400).
    AlreadyTerminated,
    /// The metrics collector has not placed the run yet, or is starting again (503).
    NotReady,
    /// A part of the broker, or its database, is not answering (503).
    Unavailable,
    /// The cloud provider failed; the cause is in the broker's log (502).
    ProviderError,
    /// Anything else; the cause is in the broker's log (500).
    Internal,
}

impl From<RequestCode> for ErrorCode {
    fn from(code: RequestCode) -> Self {
        Self::Request(code)
    }
}

impl From<ConflictCode> for ErrorCode {
    fn from(code: ConflictCode) -> Self {
        Self::Conflict(code)
    }
}

impl From<LimitCode> for ErrorCode {
    fn from(code: LimitCode) -> Self {
        Self::Limit(code)
    }
}

impl From<RefusalCode> for ErrorCode {
    fn from(code: RefusalCode) -> Self {
        Self::Refused(code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&name)
    }
}

/// An API error: a status and a body.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: ErrorCode,
    /// What went wrong, for a human.
    pub message: String,
    /// One entry per problem field.
    pub details: Vec<FieldError>,
}

impl ApiError {
    /// An error without field details.
    pub fn new(status: StatusCode, code: impl Into<ErrorCode>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), details: Vec::new() }
    }

    /// Adds the field a problem is about.
    pub fn at(mut self, path: &str) -> Self {
        let message = self.message.clone();
        self.details.push(FieldError::new(path, message));
        self
    }

    /// 400 with a code.
    pub fn bad_request(code: RequestCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422 for one invalid field.
    pub fn invalid_field(path: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, RequestCode::ValidationFailed, format!("{path}: {message}")).at(path)
    }

    /// 404 for an unknown route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, RequestCode::NotFound, "no such route")
    }

    /// 503: the system behind the API did not answer.
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, RequestCode::Unavailable, "the broker is not answering; try again")
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            RequestCode::Internal,
            "internal error; the cause is in the broker's log under this request's id",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"loads\""));
        }
        response.json(ErrorBody { error: self.code, message: self.message.clone(), details: self.details.clone() })
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::NotFound { what, id } => {
                Self::new(StatusCode::NOT_FOUND, RequestCode::NotFound, format!("no {what} with id {id}"))
            }
            DomainError::Invalid(errors) => Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: RequestCode::ValidationFailed.into(),
                message: errors.to_string(),
                details: errors.0,
            },
            DomainError::Conflict { code, message } => Self::new(StatusCode::CONFLICT, code, message),
            DomainError::Limit { code, message } => Self::new(StatusCode::TOO_MANY_REQUESTS, code, message),
            DomainError::Refused { code, message } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
            DomainError::Unavailable { what } => {
                tracing::error!(what, "a part of the broker did not answer");
                Self::unavailable()
            }
            e @ DomainError::Store { .. } => {
                tracing::error!(error = %e, cause = %error_chain(&e), "database error");
                if e.is_unreachable() {
                    Self::unavailable()
                } else {
                    Self::internal()
                }
            }
        }
    }
}

impl From<loads_actors::pool::PoolError> for ApiError {
    fn from(err: loads_actors::pool::PoolError) -> Self {
        use loads_actors::pool::PoolError;
        match err {
            PoolError::NoInstance(_) => Self::new(StatusCode::NOT_FOUND, RequestCode::NotFound, err.to_string()),
            other => {
                tracing::error!(error = %other, cause = %error_chain(&other), "instance operation failed");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    RequestCode::ProviderError,
                    "the cloud provider failed; the cause is in the broker's log under this request's id",
                )
            }
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            // Whether a run exists is not told to one without its token.
            IngestError::UnknownRun(_) | IngestError::Unauthorized => {
                Self::new(StatusCode::UNAUTHORIZED, RequestCode::Unauthorized, "a live run's ingest token is required")
            }
            e @ IngestError::Foreign(_) => Self::new(StatusCode::FORBIDDEN, RequestCode::Forbidden, e.to_string()),
            // The relay keeps its windows and delivers them again.
            e @ (IngestError::NotPlaced(_) | IngestError::Restarting) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, RequestCode::NotReady, e.to_string())
            }
        }
    }
}

/// An error and each of its causes, `: `-separated, for the log.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<MailboxError> for ApiError {
    fn from(err: MailboxError) -> Self {
        tracing::error!(error = %err, "actor mailbox error");
        Self::unavailable()
    }
}
