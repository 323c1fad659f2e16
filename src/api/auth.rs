//! Bearer-token authentication of the API.
//!
//! With no token configured the API is open, which startup allows only on a
//! loopback address. Tokens are compared in constant time.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};
use subtle::ConstantTimeEq;

use super::compat::CompatError;
use super::error::ApiError;

/// The accepted tokens.
#[derive(Clone, Default)]
pub struct Tokens(pub Vec<String>);

impl Tokens {
    /// Whether `candidate` is one of the tokens; every token is compared, in constant time each.
    pub fn accepts(&self, candidate: &str) -> bool {
        self.0.iter().fold(false, |found, token| found | bool::from(token.as_bytes().ct_eq(candidate.as_bytes())))
    }
}

/// Paths anyone may read: liveness and the API description.
const PUBLIC: [&str; 2] = ["/health", "/api/v1/openapi.json"];

fn bearer(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Middleware: refuses requests without a valid bearer token when tokens are configured.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let tokens = req.app_data::<web::Data<Tokens>>().map(|t| t.get_ref().clone()).unwrap_or_default();
    if tokens.0.is_empty() || PUBLIC.contains(&req.path()) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let error = match bearer(&req) {
        Some(token) if tokens.accepts(token) => return next.call(req).await.map(ServiceResponse::map_into_left_body),
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is not valid"),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this API needs an `Authorization: Bearer <token>` header"),
    };
    let response = if req.path().starts_with("/api/v1") {
        error.error_response()
    } else {
        CompatError::from(error).error_response()
    };
    Ok(req.into_response(response).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::Tokens;

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = Tokens(vec!["0123456789abcdef".into(), "fedcba9876543210".into()]);
        assert!(tokens.accepts("fedcba9876543210"));
        assert!(!tokens.accepts("fedcba987654321"));
        assert!(!tokens.accepts(""));
    }
}
