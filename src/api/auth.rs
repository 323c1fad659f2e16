//! Bearer-token authentication of the API, with two roles.
//!
//! `operate` tokens (`auth.tokens`) may do everything; `read` tokens
//! (`auth.read_tokens`) may only `GET` (the websocket feed included): anything
//! else is 403. With no token configured the API is open, which startup allows
//! only on a loopback address. Tokens are compared in constant time.
//!
//! A browser cannot set headers on a websocket, so the feed also takes the
//! token as a subprotocol, `bearer.<token in unpadded base64url>` beside
//! `loads` (which the feed answers with). The web UI's pages and assets carry
//! no data and are public; everything they show comes through the API.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpRequest, ResponseError};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::compat::CompatError;
use super::error::{ApiError, RequestCode};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read anything.
    Read,
    /// Read and change anything: start, abort and delete runs, terminate instances, edit the catalog.
    Operate,
}

/// The accepted tokens, by role.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Tokens with the `operate` role.
    pub operate: Vec<String>,
    /// Tokens with the `read` role.
    pub read: Vec<String>,
}

fn any_equal(tokens: &[String], candidate: &str) -> bool {
    tokens.iter().fold(false, |found, token| found | bool::from(token.as_bytes().ct_eq(candidate.as_bytes())))
}

impl Tokens {
    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.operate.is_empty() || !self.read.is_empty()
    }

    /// The role of `candidate`; every token is compared, in constant time each.
    pub fn role(&self, candidate: &str) -> Option<Role> {
        let (operate, read) = (any_equal(&self.operate, candidate), any_equal(&self.read, candidate));
        if operate {
            Some(Role::Operate)
        } else if read {
            Some(Role::Read)
        } else {
            None
        }
    }
}

/// Paths anyone may read: liveness, the API description, and whether a token is needed (and its role).
const PUBLIC: [&str; 3] = ["/health", "/api/v1/openapi.json", "/api/v1/whoami"];

/// The request's token: its `Authorization: Bearer` header, else a `bearer.` websocket subprotocol.
pub fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    let protocols = req.headers().get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let encoded = protocols.split(',').map(str::trim).find_map(|p| p.strip_prefix("bearer."))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

/// Middleware: refuses requests without a valid bearer token when tokens are configured.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let tokens = req.app_data::<web::Data<Tokens>>().map(|t| t.get_ref().clone()).unwrap_or_default();
    if !tokens.enabled() || PUBLIC.contains(&req.path()) || crate::ui::is_page(req.path()) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let error = match token_of(req.request()).map(|token| tokens.role(&token)) {
        Some(Some(Role::Operate)) => return next.call(req).await.map(ServiceResponse::map_into_left_body),
        Some(Some(Role::Read)) if reads => return next.call(req).await.map(ServiceResponse::map_into_left_body),
        Some(Some(Role::Read)) => ApiError::new(
            StatusCode::FORBIDDEN,
            RequestCode::Forbidden,
            format!("this token has the `read` role; {} {} needs an `operate` token (auth.tokens)", req.method(), req.path()),
        ),
        Some(None) => ApiError::new(StatusCode::UNAUTHORIZED, RequestCode::Unauthorized, "the bearer token is not valid"),
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, RequestCode::Unauthorized, "this API needs an `Authorization: Bearer <token>` header")
        }
    };
    let response = if req.path().starts_with("/api/v1") { error.error_response() } else { CompatError::from(error).error_response() };
    Ok(req.into_response(response).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::{Role, Tokens};

    #[test]
    fn tokens_have_the_role_they_were_configured_with() {
        let tokens = Tokens { operate: vec!["0123456789abcdef".into()], read: vec!["fedcba9876543210".into()] };
        assert_eq!(tokens.role("0123456789abcdef"), Some(Role::Operate));
        assert_eq!(tokens.role("fedcba9876543210"), Some(Role::Read));
        assert_eq!(tokens.role("fedcba987654321"), None);
        assert_eq!(tokens.role(""), None);
        assert!(!Tokens::default().enabled());
    }
}
