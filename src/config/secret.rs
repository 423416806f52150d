//! A setting that is a secret (an API key, a password): kept out of
//! `Debug` output and of every log.
//!
//! Owns that redaction. It must never print the value.

use serde::{Deserialize, Serialize};

/// A secret setting (password, token, seed). Its `Debug` and `Serialize`
/// say only whether it is set, so it never reaches a log line, an error
/// message or a reply; [`Secret::expose`] is the one way to read it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "\"<redacted>\""
        } else {
            "\"\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_set() { "<redacted>" } else { "" })
    }
}
