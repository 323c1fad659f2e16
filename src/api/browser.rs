//! What a web page in the user's browser may do with the API.
//!
//! Without tokens the API trusts whoever reaches it, and a page on any site
//! the user visits can reach `127.0.0.1` too: by DNS rebinding (its own name,
//! resolving to loopback), by a cross-site "simple" request (a form POST needs
//! no permission), or by opening the websocket. So every request's `Host`
//! must be one of the broker's own names, and a request that changes
//! something, or opens the feed, from a page of another origin is refused
//! unless that origin is configured; CORS preflights are refused likewise.
//! (Bodies without a JSON, TOML or YAML `Content-Type` are refused where they
//! are read, `input::format`.)

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};

use super::compat::CompatError;
use super::error::{ApiError, RequestCode};

/// Which hosts and origins the API answers to.
#[derive(Clone, Debug, Default)]
pub struct BrowserPolicy {
    /// Host names (lowercase, no port) accepted besides loopback names.
    pub hosts: Vec<String>,
    /// Only these hosts (and loopback names) are accepted; off when the API is
    /// served on a public address with tokens and no host is configured.
    pub restrict_hosts: bool,
    /// Origins (`scheme://host[:port]`, lowercase) whose pages may change things and open the feed.
    pub origins: Vec<String>,
}

impl BrowserPolicy {
    /// The policy for `allowed_hosts` and `allowed_origins`, served on a loopback address or not.
    pub fn new(allowed_hosts: &[String], allowed_origins: &[String], loopback: bool) -> Self {
        let lower = |list: &[String]| list.iter().map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>();
        Self { hosts: lower(allowed_hosts), restrict_hosts: loopback || !allowed_hosts.is_empty(), origins: lower(allowed_origins) }
    }

    fn host_allowed(&self, host_header: &str) -> bool {
        if !self.restrict_hosts {
            return true;
        }
        let name = host_name(host_header);
        loads_actors::domain::validate::is_loopback_name(&name) || self.hosts.contains(&name)
    }

    /// Same origin (the page came from this very host and port) or configured.
    fn origin_allowed(&self, origin: &str, host_header: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        authority.is_some_and(|a| a == host_header.to_ascii_lowercase()) || self.origins.contains(&origin)
    }

    fn configured_origin(&self, origin: &str) -> bool {
        self.origins.contains(&origin.trim().to_ascii_lowercase())
    }
}

/// The name in a `Host` header: lowercase, without the port or an IPv6 address's brackets.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

fn header(req: &ServiceRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Middleware: applies the `BrowserPolicy` before anything else sees the request.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let policy = req.app_data::<web::Data<BrowserPolicy>>().map(|p| p.get_ref().clone()).unwrap_or_default();
    let host = header(&req, header::HOST).map(str::to_string).unwrap_or_else(|| req.connection_info().host().to_string());
    let origin = header(&req, header::ORIGIN).map(str::to_string);
    let refuse = |req: ServiceRequest, error: ApiError| {
        let response = if req.path().starts_with("/api/v1") || !req.path().starts_with("/api") {
            error.error_response()
        } else {
            CompatError::from(error).error_response()
        };
        Ok(req.into_response(response).map_into_right_body())
    };

    if !policy.host_allowed(&host) {
        let error = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            RequestCode::HostNotAllowed,
            format!("this broker does not answer to the host {:?}; add it to server.allowed_hosts", host_name(&host)),
        );
        return refuse(req, error);
    }

    let preflight = req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return match origin.as_deref().filter(|o| policy.configured_origin(o)) {
            Some(o) => {
                let response = HttpResponse::NoContent()
                    .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o.to_string()))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, PUT, DELETE"))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization, content-type"))
                    .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                    .insert_header((header::VARY, "Origin"))
                    .finish();
                Ok(req.into_response(response).map_into_right_body())
            }
            None => refuse(
                req,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    RequestCode::CorsRefused,
                    "cross-origin requests are refused; see server.allowed_origins",
                ),
            ),
        };
    }

    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let opens_socket = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if let Some(o) = origin.as_deref() {
        if (changes || opens_socket) && !policy.origin_allowed(o, &host) {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                RequestCode::OriginNotAllowed,
                format!("requests from pages of {o:?} are refused; add the origin to server.allowed_origins"),
            );
            return refuse(req, error);
        }
    }
    let cors = origin.filter(|o| policy.configured_origin(o));
    let mut response = next.call(req).await?;
    if let Some(o) = cors.and_then(|o| HeaderValue::from_str(&o).ok()) {
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(response.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn loopback_brokers_answer_only_to_loopback_names_and_configured_ones() {
        let policy = BrowserPolicy::new(&["loads.internal".into()], &[], true);
        for ok in ["127.0.0.1:8080", "localhost:1", "[::1]:80", "LOADS.internal:8080"] {
            assert!(policy.host_allowed(ok), "{ok}");
        }
        assert!(!policy.host_allowed("attacker.example:8080"));
        assert!(BrowserPolicy::new(&[], &[], false).host_allowed("anything.example"));
    }

    #[test]
    fn only_the_same_origin_or_a_configured_one_may_change_things() {
        let policy = BrowserPolicy::new(&[], &["https://ui.example".into()], true);
        assert!(policy.origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(policy.origin_allowed("https://UI.example", "127.0.0.1:8080"));
        assert!(!policy.origin_allowed("http://attacker.example", "127.0.0.1:8080"));
        assert!(!policy.origin_allowed("null", "127.0.0.1:8080"));
        assert!(!policy.origin_allowed("http://127.0.0.1:9999", "127.0.0.1:8080"));
    }
}
