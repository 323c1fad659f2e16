//! Reading request input: ids in paths, query parameters and bodies, each
//! refused with a 4xx that names what is wrong.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use loads_actors::domain::parse::{parse_document, DocumentFormat};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, RequestCode};

/// The page size used when `limit` is not given.
pub const DEFAULT_LIMIT: u64 = 50;
/// The largest page size.
pub const MAX_LIMIT: u64 = 1000;

/// Parses a path id; a malformed one is a 400 naming the parameter.
pub fn id(raw: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request(RequestCode::InvalidId, format!("{name} must be a UUID, got {raw:?}")).at(name))
}

/// Query parameters by name (the last one wins when repeated).
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses the request's query string.
    pub fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|e| ApiError::bad_request(RequestCode::InvalidQuery, format!("malformed query string: {e}")))?
            .into_inner();
        if let Some((name, _)) = pairs.iter().find(|(k, v)| k.chars().chain(v.chars()).any(char::is_control)) {
            return Err(
                ApiError::bad_request(RequestCode::InvalidQuery, format!("query parameter {name:?} contains a control character")).at(name)
            );
        }
        Ok(Self(pairs.into_iter().collect()))
    }

    /// A string parameter.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A non-negative integer parameter within `range`.
    pub fn whole(&self, name: &str, range: std::ops::RangeInclusive<u64>) -> Result<Option<u64>, ApiError> {
        let Some(raw) = self.text(name) else { return Ok(None) };
        match raw.parse::<u64>() {
            Ok(v) if range.contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::bad_request(
                RequestCode::InvalidQuery,
                format!("{name} must be a whole number from {} to {}, got {raw:?}", range.start(), range.end()),
            )
            .at(name)),
        }
    }

    /// A UUID parameter.
    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.text(name).map(|raw| id(raw, name)).transpose()
    }

    /// A boolean flag: `1`/`true`/`yes` or `0`/`false`/`no`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("0" | "false" | "no") => Ok(false),
            Some("1" | "true" | "yes") => Ok(true),
            Some(other) => Err(ApiError::bad_request(RequestCode::InvalidQuery, format!("{name} must be 1 or 0, got {other:?}")).at(name)),
        }
    }

    /// `limit` and `offset`, defaulted and range-checked.
    pub fn page(&self) -> Result<(u64, u64), ApiError> {
        let limit = self.whole("limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
        let offset = self.whole("offset", 0..=i64::MAX as u64)?.unwrap_or(0);
        Ok((limit, offset))
    }
}

/// Reads the whole body, refusing more than `limit` bytes with a 413.
pub async fn body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, RequestCode::PayloadTooLarge, format!("the request body is larger than {limit} bytes"))
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(RequestCode::InvalidBody, format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn content_type(req: &HttpRequest) -> Option<&str> {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// The document format of a body, by `Content-Type`; `json_only` refuses TOML
/// and YAML. A body without a `Content-Type` is refused: a web page may send
/// one cross-site without asking, a JSON or TOML type it may not.
pub fn format(req: &HttpRequest, json_only: bool) -> Result<DocumentFormat, ApiError> {
    let accepted = if json_only { "send application/json" } else { "send application/json, application/toml or application/yaml" };
    let Some(ct) = content_type(req) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestCode::UnsupportedMediaType,
            format!("the body has no Content-Type; {accepted}"),
        ));
    };
    match DocumentFormat::from_content_type(ct) {
        Some(DocumentFormat::Json) => Ok(DocumentFormat::Json),
        Some(f) if !json_only => Ok(f),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestCode::UnsupportedMediaType,
            format!("Content-Type {ct:?} is not accepted here; {accepted}"),
        )),
    }
}

/// Longest a document may take to parse; past it the request is refused.
pub const PARSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Parses a body as a document, off the server's worker threads and within
/// `PARSE_DEADLINE`: malformed or too deeply nested text is a 400 saying
/// where; duplicate keys, non-finite numbers and NUL characters a 422 naming the field.
pub async fn document(bytes: web::Bytes, format: DocumentFormat) -> Result<Value, ApiError> {
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| ApiError::bad_request(RequestCode::InvalidBody, format!("the body is not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(RequestCode::InvalidBody, "the request body is empty; a document is required"));
    }
    let parse = web::block(move || parse_document(&text, format));
    let parsed = match tokio::time::timeout(PARSE_DEADLINE, parse).await {
        Err(_) => {
            return Err(ApiError::bad_request(
                RequestCode::InvalidDocument,
                format!("the {} document took longer than {} s to parse", format.name(), PARSE_DEADLINE.as_secs()),
            ))
        }
        Ok(Err(_)) => return Err(ApiError::unavailable()),
        Ok(Ok(parsed)) => parsed,
    };
    parsed.map_err(|e| {
        if e.0.iter().any(|f| !f.path.is_empty()) {
            return ApiError::from(loads_actors::domain::DomainError::Invalid(e));
        }
        let code = if format == DocumentFormat::Json { RequestCode::InvalidJson } else { RequestCode::InvalidDocument };
        ApiError::bad_request(code, e.0.first().map(|f| f.message.clone()).unwrap_or_default())
    })
}

/// Reads and parses a body in one go; an empty body gives `None`.
pub async fn optional_json(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<Option<Value>, ApiError> {
    let bytes = body(req, payload, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let format = format(req, true)?;
    document(bytes, format).await.map(Some)
}

/// Reads and parses a required body.
pub async fn required(req: &HttpRequest, payload: web::Payload, limit: usize, json_only: bool) -> Result<Value, ApiError> {
    let format = format(req, json_only)?;
    let bytes = body(req, payload, limit).await?;
    document(bytes, format).await
}
