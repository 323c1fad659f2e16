//! Reading documents in the three formats users write plans in.
//!
//! Everything is first turned into a JSON value so that one validator, with
//! one set of paths and messages, serves JSON, TOML and YAML alike.
//!
//! Parsing is hostile-input safe: nesting is bounded by a cheap scan before
//! any parser runs (a YAML parser's time grows with the square of the depth),
//! and the value is built by one strict visitor for all three formats, which
//! refuses what the formats would otherwise let through silently: duplicate
//! keys (last one wins in JSON and YAML), NaN and infinities (which became
//! `null`, then a default) and NUL characters (which PostgreSQL cannot store).

use std::cell::RefCell;
use std::fmt;
use std::path::Path;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::{FieldError, ValidationErrors};

/// Deepest nesting of lists and maps a document may have.
pub const MAX_DEPTH: usize = 64;

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

/// Parses `text` as `format` into a JSON value. Syntax errors and documents
/// nested deeper than `MAX_DEPTH` are reported at the document root; duplicate
/// keys, non-finite numbers and NUL characters at the path of their field.
pub fn parse_document(text: &str, format: DocumentFormat) -> Result<Value, ValidationErrors> {
    let syntax = |msg: String| ValidationErrors::one("", format!("not valid {}: {msg}", format.name()));
    let depth = nesting_depth(text, format);
    if depth > MAX_DEPTH {
        return Err(ValidationErrors::one("", format!("the {} document is nested deeper than {MAX_DEPTH} levels", format.name())));
    }
    let problems = RefCell::new(Vec::new());
    let seed = Strict { path: "", problems: &problems };
    let parsed = match format {
        DocumentFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v)).map_err(|e| format!("{e}"))
        }
        DocumentFormat::Toml => toml::Deserializer::new(text)
            .deserialize_any(StrictVisitor(seed))
            .map_err(|e| e.message().to_string() + &toml_location(text, e.span())),
        DocumentFormat::Yaml => {
            if text.trim().is_empty() {
                Ok(Value::Null)
            } else {
                seed.deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| format!("{e}"))
            }
        }
    };
    let value = parsed.map_err(syntax)?;
    let problems = problems.into_inner();
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(ValidationErrors(problems))
    }
}

/// Builds a JSON value at `path`, noting each problem it refuses in `problems`.
#[derive(Clone, Copy)]
struct Strict<'a> {
    path: &'a str,
    problems: &'a RefCell<Vec<FieldError>>,
}

impl Strict<'_> {
    fn problem(&self, message: impl Into<String>) {
        self.problems.borrow_mut().push(FieldError::new(self.path, message));
    }

    fn text(&self, s: &str) -> Value {
        if s.contains('\0') {
            self.problem("must not contain a NUL character");
        }
        Value::String(s.to_string())
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor(self))
    }
}

struct StrictVisitor<'a>(Strict<'a>);

/// The key TOML's deserializer wraps a date-time in.
const TOML_DATETIME: &str = "$__toml_private_datetime";

impl<'de> Visitor<'de> for StrictVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a document value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => {
                self.0.problem(format!("must be a finite number, not {v}"));
                Ok(Value::Null)
            }
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(self.0.text(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.0.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.0.path, items.len());
            match seq.next_element_seed(Strict { path: &path, problems: self.0.problems })? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.0.path.is_empty() { key.clone() } else { format!("{}.{key}", self.0.path) };
            let field = Strict { path: &path, problems: self.0.problems };
            let value = map.next_value_seed(field)?;
            if key == TOML_DATETIME {
                return Ok(value);
            }
            if key.contains('\0') {
                field.problem("a key must not contain a NUL character");
            }
            if out.contains_key(&key) {
                field.problem("is given more than once");
            } else {
                out.insert(key, value);
            }
        }
        Ok(Value::Object(out))
    }
}

/// An upper bound of how deeply `text` nests lists and maps, found without
/// parsing it: brackets and braces outside strings and comments, plus (TOML)
/// the dots of keys and (YAML) the indentation levels of block collections.
pub fn nesting_depth(text: &str, format: DocumentFormat) -> usize {
    let mut flow = 0usize;
    let mut max = 0usize;
    let mut block: Vec<usize> = Vec::new();
    let mut string: Option<char> = None;
    for line in text.lines() {
        let mut line_depth = 0;
        if format == DocumentFormat::Yaml && flow == 0 && string.is_none() {
            line_depth = yaml_block_depth(line, &mut block);
        }
        let mut prev = ' ';
        let mut key_dots = 0usize;
        let mut before_value = format == DocumentFormat::Toml && flow == 0;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if let Some(quote) = string {
                if c == '\\' && quote == '"' {
                    chars.next();
                } else if c == quote {
                    string = None;
                }
                prev = c;
                continue;
            }
            match c {
                '"' => string = Some('"'),
                '\'' if format != DocumentFormat::Json && (format == DocumentFormat::Toml || " \t[{,:-".contains(prev)) => {
                    string = Some('\'')
                }
                '#' if format != DocumentFormat::Json && (prev == ' ' || prev == '\t' || format == DocumentFormat::Toml) => break,
                '[' | '{' => {
                    flow += 1;
                    max = max.max(flow + line_depth + key_dots);
                }
                ']' | '}' => flow = flow.saturating_sub(1),
                '.' if before_value => key_dots += 1,
                '=' => before_value = false,
                _ => {}
            }
            prev = c;
        }
        // A single-quoted YAML scalar or a basic TOML/JSON string does not span lines.
        if string == Some('\'') || format != DocumentFormat::Yaml {
            string = None;
        }
        max = max.max(flow + line_depth + key_dots);
    }
    max
}

/// The block nesting of a YAML line: each indentation column still open,
/// and each `- ` or `? ` indicator that opens a collection on the same line.
fn yaml_block_depth(line: &str, open: &mut Vec<usize>) -> usize {
    let content = line.trim_start_matches(' ');
    if content.is_empty() || content.starts_with('#') {
        return open.len();
    }
    let mut column = line.len() - content.len();
    while open.last().is_some_and(|&c| c >= column) {
        open.pop();
    }
    open.push(column);
    let mut rest = content;
    while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
        let trimmed = after.trim_start_matches(' ');
        column += rest.len() - trimmed.len();
        open.push(column);
        rest = trimmed;
    }
    open.len()
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
    fn region_shares_read_the_same_in_every_format() {
        let json = parse_document(r#"{"instance_region": {"us-east-1": 60, "eu-west-1": 40}}"#, DocumentFormat::Json).unwrap();
        let toml = parse_document("instance_region = { \"us-east-1\" = 60, \"eu-west-1\" = 40 }\n", DocumentFormat::Toml).unwrap();
        let yaml = parse_document("instance_region:\n  us-east-1: 60\n  eu-west-1: 40\n", DocumentFormat::Yaml).unwrap();
        assert_eq!(json, toml);
        assert_eq!(json, yaml);
        let toml = parse_document("instance_region = [\"us-east-1\", \"eu-west-1\"]\n", DocumentFormat::Toml).unwrap();
        let yaml = parse_document("instance_region: [us-east-1, eu-west-1]\n", DocumentFormat::Yaml).unwrap();
        assert_eq!(toml, yaml);
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = parse_document("name = \n", DocumentFormat::Toml).unwrap_err();
        assert!(err.0[0].message.starts_with("not valid TOML"), "{err}");
        assert!(err.0[0].message.contains("line 1"), "{err}");
    }

    fn problems(text: &str, format: DocumentFormat) -> Vec<String> {
        parse_document(text, format).unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn deep_nesting_is_refused_in_every_format_before_parsing() {
        let depth = 100_000;
        let bombs = [
            (DocumentFormat::Yaml, format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth))),
            (DocumentFormat::Yaml, format!("{}x", "- ".repeat(depth))),
            (DocumentFormat::Json, format!("{}1{}", "[".repeat(depth), "]".repeat(depth))),
            (DocumentFormat::Toml, format!("a = {}1{}", "[".repeat(depth), "]".repeat(depth))),
            (DocumentFormat::Toml, format!("{} = 1", vec!["a"; depth].join("."))),
        ];
        for (format, text) in bombs {
            let started = std::time::Instant::now();
            let errs = problems(&text, format);
            assert!(errs[0].contains("nested deeper than 64 levels"), "{format:?}: {errs:?}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{format:?} took {:?}", started.elapsed());
        }
    }

    #[test]
    fn ordinary_nesting_and_brackets_in_strings_pass() {
        let yaml = "name: p\nplans:\n  - name: a\n    steps:\n      - name: s\n        environment_data:\n          T: '{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'\n";
        assert!(parse_document(yaml, DocumentFormat::Yaml).is_ok());
        let json = format!(r#"{{"a": "{}"}}"#, "[".repeat(200));
        assert!(parse_document(&json, DocumentFormat::Json).is_ok());
        assert!(nesting_depth("a:\n  b:\n    - - c\n", DocumentFormat::Yaml) >= 4);
    }

    #[test]
    fn duplicate_keys_are_refused_at_their_path_in_json_and_yaml() {
        assert_eq!(
            problems(r#"{"name": "a", "steps": [{"name": "x", "name": "y"}]}"#, DocumentFormat::Json),
            ["steps[0].name: is given more than once"]
        );
        assert_eq!(problems("name: a\nname: b\n", DocumentFormat::Yaml), ["name: is given more than once"]);
        assert!(problems("name = 'a'\nname = 'b'\n", DocumentFormat::Toml)[0].starts_with("not valid TOML"));
    }

    #[test]
    fn non_finite_numbers_are_refused_instead_of_becoming_null() {
        assert_eq!(problems("run_delay = nan\n", DocumentFormat::Toml), ["run_delay: must be a finite number, not NaN"]);
        assert_eq!(problems("a = [1, inf]\n", DocumentFormat::Toml), ["a[1]: must be a finite number, not inf"]);
        assert_eq!(problems("run_delay: .nan\n", DocumentFormat::Yaml), ["run_delay: must be a finite number, not NaN"]);
        assert_eq!(problems("x: -.inf\n", DocumentFormat::Yaml), ["x: must be a finite number, not -inf"]);
    }

    #[test]
    fn nul_characters_are_refused_in_values_and_keys() {
        assert_eq!(problems(r#"{"name": "a\u0000b"}"#, DocumentFormat::Json), ["name: must not contain a NUL character"]);
        assert_eq!(problems(r#"{"env": {"K\u0000": "v"}}"#, DocumentFormat::Json), ["env.K\u{0}: a key must not contain a NUL character"]);
    }

    #[test]
    fn toml_dates_stay_strings() {
        let v = parse_document("when = 1979-05-27T07:32:00Z\n", DocumentFormat::Toml).unwrap();
        assert_eq!(v["when"], "1979-05-27T07:32:00Z");
    }
}
