//! The one error shape of the v1 API and its mapping from the system's errors.
//!
//! `{"error": "<snake_case_code>", "message": "...", "details": [{"path", "message"}]}`.
//! 5xx bodies are opaque: the cause is logged, not returned.

use actix::MailboxError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use loads_actors::domain::FieldError;
use loads_actors::store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every v1 error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `validation_failed`.
    pub error: &'static str,
    /// What went wrong, for a human.
    pub message: String,
    /// One entry per problem field.
    pub details: Vec<FieldError>,
}

/// An API error: a status and a body.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// What went wrong, for a human.
    pub message: String,
    /// One entry per problem field.
    pub details: Vec<FieldError>,
}

impl ApiError {
    /// An error without field details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: Vec::new() }
    }

    /// Adds the field a problem is about.
    pub fn at(mut self, path: &str) -> Self {
        let message = self.message.clone();
        self.details.push(FieldError::new(path, message));
        self
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for an unknown route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 503: the system behind the API did not answer.
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the broker is not answering; try again")
    }

    fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the cause is in the broker's log")
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

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { what, id } => Self::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with id {id}")),
            StoreError::Invalid(errors) => {
                Self { status: StatusCode::UNPROCESSABLE_ENTITY, code: "validation_failed", message: errors.to_string(), details: errors.0 }
            }
            StoreError::Conflict { code, message } => Self::new(StatusCode::CONFLICT, code, message),
            StoreError::Limit { code, message } => Self::new(StatusCode::TOO_MANY_REQUESTS, code, message),
            StoreError::Refused { code, message } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
            e @ StoreError::Database(_) => {
                tracing::error!(error = %e, "database error");
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
            PoolError::NoInstance(_) => Self::new(StatusCode::NOT_FOUND, "not_found", err.to_string()),
            other => {
                tracing::error!(error = %other, "instance operation failed");
                Self::new(StatusCode::BAD_GATEWAY, "provider_error", other.to_string())
            }
        }
    }
}

impl From<MailboxError> for ApiError {
    fn from(err: MailboxError) -> Self {
        tracing::error!(error = %err, "actor mailbox error");
        Self::unavailable()
    }
}
