//! How values are written in settings: durations as seconds or humantime,
//! and lists as arrays or comma-separated strings.
//!
//! Owns those (de)serialisers. It must never accept a value it cannot
//! give back as written.

/// Durations as whole seconds (`3600`, the seed's `VECTOR_STORE_TTL_SECONDS`)
/// or humantime strings (`"1h 30m"`); written back as humantime.
///
/// humantime-serde alone reads only strings, and the seed's variables hold bare
/// numbers, so numbers are taken as seconds here and strings go to humantime.
pub mod duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Float(f64),
            Text(String),
        }
        let d = match Raw::deserialize(d)? {
            Raw::Secs(s) => Duration::from_secs(s),
            // try_: from_secs_f64 panics on what a Duration cannot hold (1e30).
            Raw::Float(f) => Duration::try_from_secs_f64(f)
                .map_err(|_| de::Error::custom(format!("{f} is not a duration in seconds")))?,
            Raw::Text(t) => match t.trim().parse::<u64>() {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| de::Error::custom(format!("{t:?} is not a duration: {e}")))?,
            },
        };
        check(d).map_err(de::Error::custom)
    }

    /// The longest duration any setting may have: ten years. Longer ones
    /// are surely mistakes, and they would overflow deadlines computed
    /// from them (`Instant + Duration` panics past the clock's range).
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    /// `d`, if it is at most [`MAX`].
    pub fn check(d: Duration) -> Result<Duration, String> {
        if d > MAX {
            return Err(format!(
                "{} is longer than ten years, the longest a duration setting may be",
                humantime::format_duration(d)
            ));
        }
        Ok(d)
    }
}

/// A list of keys: a list, or one string of comma-separated keys (how an
/// environment variable gives it). Keys that look like numbers are kept as
/// written.
pub mod keys {
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(keys: &[String], s: S) -> Result<S::Ok, S::Error> {
        keys.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let one = |v: Value| match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            v => Err(de::Error::custom(format!("{v} is not a key"))),
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()),
            Value::Array(items) => items.into_iter().map(one).collect(),
            v => one(v).map(|k| vec![k]),
        }
    }
}

/// A list of durations, each as [`duration`] reads it.
pub mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct One(#[serde(with = "super::duration")] Duration);

    pub fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        d.iter().map(|d| One(*d)).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<One>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}
