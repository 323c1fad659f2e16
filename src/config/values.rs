//! Setting values with rules of their own: a few named values read from their names,
//! secrets that never print, a database URL whose password never prints.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A setting with a few named values: read from its name, written as it.
macro_rules! named_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                match text.as_str() {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("must be {}, not {other:?}", [$(concat!("`", $text, "`")),+].join(" or "))),
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

named_values! {
    /// How log lines are written.
    LogFormat {
        /// Readable lines.
        Human = "human",
        /// One JSON object per line.
        Json = "json",
    }
}

named_values! {
    /// Where nodes come from.
    Provider {
        /// Containers on this machine's Docker engine.
        Local = "local",
        /// EC2 instances.
        Ec2 = "ec2",
    }
}

named_values! {
    /// Which address of an instance SSH connects to.
    Ec2Address {
        /// The public IPv4 address (a broker outside the VPC).
        Public = "public",
        /// The private address (a broker inside the VPC).
        Private = "private",
    }
}

impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Human, Self::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(<&'static str>::from(*self)))
    }
}

/// A secret string: read from configuration, never printed.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for comparing or sending.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

/// A database URL whose password is masked when printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub(super) String);

impl DatabaseUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `********`.
    pub fn masked(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.clone() };
        let rest = &url[scheme_end..];
        let Some(at) = rest.find('@') else { return url.clone() };
        match rest[..at].find(':') {
            Some(colon) => format!("{}{}:********{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.clone(),
        }
    }

    /// Whether it names an SQLite database.
    pub(super) fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}
