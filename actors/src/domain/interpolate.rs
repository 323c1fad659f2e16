//! `$VAR` / `${VAR}` interpolation with `$$` for a literal `$`.
//!
//! Templates are parsed once into pieces so that a plan can be checked for
//! unknown variables when it is validated, long before a run would trip on them.

use std::collections::BTreeSet;
use std::fmt;

/// The variables the broker gives every container (reference, section 4).
pub const INJECTED_VARIABLES: [&str; 8] =
    ["RUN_ID", "BROKER_ID", "BROKER_VERSION", "CONTAINER_ID", "HOST_IP", "PRIVATE_IP", "STATSD_HOST", "STATSD_PORT"];

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text copied as is (`$$` already folded to `$`).
    Text(std::borrow::Cow<'a, str>),
    /// A variable reference, by name.
    Var(&'a str),
}

/// Why a template cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the offending `$`.
    pub offset: usize,
    /// What is wrong there.
    pub reason: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {} (write `$$` for a literal `$`)", self.reason, self.offset)
    }
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Splits `template` into text and variable references.
pub fn parse(template: &str) -> Result<Vec<Piece<'_>>, SyntaxError> {
    let bytes = template.as_bytes();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        text.push_str(&template[text_start..i]);
        let dollar = i;
        match bytes.get(i + 1) {
            Some(b'$') => {
                text.push('$');
                i += 2;
            }
            Some(b'{') => {
                let close =
                    template[i + 2..].find('}').map(|p| i + 2 + p).ok_or(SyntaxError { offset: dollar, reason: "unclosed `${`" })?;
                let name = &template[i + 2..close];
                if name.is_empty() || !is_name_start(name.as_bytes()[0]) || !name.bytes().all(is_name_char) {
                    return Err(SyntaxError { offset: dollar, reason: "invalid variable name in `${...}`" });
                }
                flush(&mut pieces, &mut text);
                pieces.push(Piece::Var(name));
                i = close + 1;
            }
            Some(&c) if is_name_start(c) => {
                let mut end = i + 1;
                while end < bytes.len() && is_name_char(bytes[end]) {
                    end += 1;
                }
                flush(&mut pieces, &mut text);
                pieces.push(Piece::Var(&template[i + 1..end]));
                i = end;
            }
            _ => return Err(SyntaxError { offset: dollar, reason: "`$` not followed by a variable name" }),
        }
        text_start = i;
    }
    text.push_str(&template[text_start..]);
    flush(&mut pieces, &mut text);
    Ok(pieces)
}

fn flush(pieces: &mut Vec<Piece<'_>>, text: &mut String) {
    if !text.is_empty() {
        pieces.push(Piece::Text(std::mem::take(text).into()));
    }
}

/// The names of the variables `template` refers to.
pub fn variables(template: &str) -> Result<BTreeSet<&str>, SyntaxError> {
    Ok(parse(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(name) => Some(name),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Replaces every variable with `lookup(name)`; the first unknown name is the error.
pub fn render<'t>(template: &'t str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, RenderError<'t>> {
    let mut out = String::with_capacity(template.len());
    for piece in parse(template).map_err(RenderError::Syntax)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Var(name) => out.push_str(&lookup(name).ok_or(RenderError::Unknown(name))?),
        }
    }
    Ok(out)
}

/// Why a template could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError<'t> {
    /// The template is malformed.
    Syntax(SyntaxError),
    /// The template names a variable nobody defines.
    Unknown(&'t str),
}

impl fmt::Display for RenderError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Syntax(e) => e.fmt(f),
            RenderError::Unknown(name) => write!(f, "unknown variable `${name}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str) -> Vec<&str> {
        variables(t).unwrap().into_iter().collect()
    }

    #[test]
    fn finds_plain_and_braced_variables() {
        assert_eq!(vars("$STATSD_HOST:${STATSD_PORT}/x"), ["STATSD_HOST", "STATSD_PORT"]);
        assert_eq!(vars("test-$RUN_ID"), ["RUN_ID"]);
        assert_eq!(vars("http://x/{{.Token}}"), Vec::<&str>::new());
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        let out = render("cost: $$5 for $WHO$$", |n| (n == "WHO").then(|| "me".to_string())).unwrap();
        assert_eq!(out, "cost: $5 for me$");
        assert_eq!(vars("$$HOME"), Vec::<&str>::new());
    }

    #[test]
    fn renders_adjacent_variables() {
        let out = render("${A}${B}-$A_", |n| Some(n.to_lowercase())).unwrap();
        assert_eq!(out, "ab-a_");
    }

    #[test]
    fn malformed_templates_are_errors_with_positions() {
        assert_eq!(parse("ab${X").unwrap_err().offset, 2);
        assert_eq!(parse("${}").unwrap_err().reason, "invalid variable name in `${...}`");
        assert_eq!(parse("${1A}").unwrap_err().reason, "invalid variable name in `${...}`");
        assert_eq!(parse("price $5").unwrap_err().offset, 6);
        assert!(parse("trailing $").is_err());
    }

    #[test]
    fn unknown_variable_names_the_variable() {
        let err = render("$NOPE", |_| None).unwrap_err();
        assert_eq!(err.to_string(), "unknown variable `$NOPE`");
    }
}
