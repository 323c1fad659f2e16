//! Reading documents in the three formats users write plans in.
//!
//! Everything is first turned into a JSON value so that one validator, with
//! one set of paths and messages, serves JSON, TOML and YAML alike.

use std::path::Path;

use serde_json::Value;

use super::error::ValidationErrors;

/// A document format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentFormat {
    /// JSON (`application/json`, `.json`).
    Json,
    /// TOML (`application/toml`, `.toml`).
    Toml,
    /// YAML (`application/yaml`, `.yaml`/`.yml`).
    Yaml,
}

impl DocumentFormat {
    /// The format named by a `Content-Type` header value, if any.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" => Some(Self::Json),
            "application/toml" | "text/toml" | "text/x-toml" => Some(Self::Toml),
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Some(Self::Yaml),
            _ => None,
        }
    }

    /// The format a file's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }

    /// The format's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Toml => "TOML",
            Self::Yaml => "YAML",
        }
    }
}

/// Parses `text` as `format` into a JSON value; a syntax error is reported at the document root.
pub fn parse_document(text: &str, format: DocumentFormat) -> Result<Value, ValidationErrors> {
    let parsed = match format {
        DocumentFormat::Json => serde_json::from_str::<Value>(text).map_err(|e| e.to_string()),
        DocumentFormat::Toml => toml::from_str::<toml::Value>(text)
            .map_err(|e| e.message().to_string() + &toml_location(text, e.span()))
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string())),
        DocumentFormat::Yaml => serde_yaml::from_str::<Value>(text).map_err(|e| e.to_string()),
    };
    parsed.map_err(|msg| ValidationErrors::one("", format!("not valid {}: {msg}", format.name())))
}

fn toml_location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else { return String::new() };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    format!(" at line {line} column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_the_format() {
        assert_eq!(DocumentFormat::from_content_type("application/json; charset=utf-8"), Some(DocumentFormat::Json));
        assert_eq!(DocumentFormat::from_content_type("application/toml"), Some(DocumentFormat::Toml));
        assert_eq!(DocumentFormat::from_content_type("application/x-yaml"), Some(DocumentFormat::Yaml));
        assert_eq!(DocumentFormat::from_content_type("text/plain"), None);
    }

    #[test]
    fn the_three_formats_give_the_same_value() {
        let json = parse_document(r#"{"name": "p", "plans": [{"name": "a", "steps": []}]}"#, DocumentFormat::Json).unwrap();
        let toml = parse_document("name = \"p\"\n[[plans]]\nname = \"a\"\nsteps = []\n", DocumentFormat::Toml).unwrap();
        let yaml = parse_document("name: p\nplans:\n  - name: a\n    steps: []\n", DocumentFormat::Yaml).unwrap();
        assert_eq!(json, toml);
        assert_eq!(json, yaml);
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = parse_document("name = \n", DocumentFormat::Toml).unwrap_err();
        assert!(err.0[0].message.starts_with("not valid TOML"), "{err}");
        assert!(err.0[0].message.contains("line 1"), "{err}");
    }
}
