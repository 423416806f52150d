//! Metadata filters: the validated form of docs/protocol.md's `Filter` and its
//! meaning.
//!
//! Owns parsing a filter from JSON (refusing the empty and the ambiguous with
//! `bad_request`) and the reference semantics in [`Filter::matches`], which the
//! stores' translations must agree with (the tests compare them). It must never
//! know how a store evaluates a filter.

use serde_json::{Map, Value};

use crate::protocol::ServiceError;

/// At most this many keys in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// At most this many values in one any-of list.
pub const MAX_ANY_OF: usize = 1024;
/// Longest metadata key a filter may name, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// A scalar a metadata value is compared with. Numbers compare as numbers
/// (`1` equals `1.0`), never with strings (`1` is not `"1"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    String(String),
    Number(f64),
    Bool(bool),
}

/// A numeric range; at least one bound is set.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

impl Range {
    /// The same range with at most one lower and one upper bound, the
    /// tightest of each. Qdrant (edge and server) does not apply both `gt`
    /// and `gte` (or `lt` and `lte`) when both are given, so every backend
    /// sends this form.
    pub fn tightest(&self) -> Self {
        let (gt, gte) = match (self.gt, self.gte) {
            (Some(gt), Some(gte)) if gt >= gte => (Some(gt), None),
            (Some(_), Some(gte)) => (None, Some(gte)),
            other => other,
        };
        let (lt, lte) = match (self.lt, self.lte) {
            (Some(lt), Some(lte)) if lt <= lte => (Some(lt), None),
            (Some(_), Some(lte)) => (None, Some(lte)),
            other => other,
        };
        Self { gt, gte, lt, lte }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(Scalar),
    AnyOf(Vec<Scalar>),
    Range(Range),
}

/// A conjunction of conditions over top-level metadata keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub conditions: Vec<(String, Condition)>,
}

impl Filter {
    /// Parse and validate a wire filter.
    pub fn parse(value: &Value) -> Result<Self, ServiceError> {
        let Value::Object(map) = value else {
            return Err(ServiceError::bad_request("filter must be a JSON object"));
        };
        if map.is_empty() {
            return Err(ServiceError::bad_request(
                "filter is empty; leave it out to match everything",
            ));
        }
        if map.len() > MAX_CONDITIONS {
            return Err(ServiceError::too_large(format!(
                "filter has {} keys, at most {MAX_CONDITIONS} are allowed",
                map.len()
            )));
        }
        let conditions = map
            .iter()
            .map(|(key, value)| Ok((check_key(key)?, parse_condition(key, value)?)))
            .collect::<Result<_, ServiceError>>()?;
        Ok(Self { conditions })
    }

    /// Parse an optional wire filter.
    pub fn parse_opt(value: Option<&Value>) -> Result<Option<Self>, ServiceError> {
        value.map(Self::parse).transpose()
    }

    /// Whether a document with this metadata matches: every condition holds
    /// on the key's value, or, when the value is an array, on any element.
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        self.conditions
            .iter()
            .all(|(key, cond)| match metadata.get(key) {
                None => false,
                Some(Value::Array(items)) => items.iter().any(|v| cond.holds(v)),
                Some(v) => cond.holds(v),
            })
    }
}

impl Condition {
    fn holds(&self, value: &Value) -> bool {
        match self {
            Condition::Equals(s) => s.equals(value),
            Condition::AnyOf(list) => list.iter().any(|s| s.equals(value)),
            Condition::Range(r) => value.as_f64().is_some_and(|x| r.contains(x)),
        }
    }
}

impl Scalar {
    fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (Scalar::String(a), Value::String(b)) => a == b,
            (Scalar::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl Range {
    pub fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }
}

/// A metadata key a filter may name: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_key(key: &str) -> Result<String, ServiceError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(key.to_owned())
    } else {
        Err(ServiceError::bad_request(format!(
            "filter key {key:?} must be 1 to {MAX_KEY_LEN} characters of [A-Za-z0-9_-]"
        )))
    }
}

fn parse_condition(key: &str, value: &Value) -> Result<Condition, ServiceError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ServiceError::bad_request(format!(
                    "filter key {key:?}: an empty any-of list matches nothing"
                )));
            }
            if items.len() > MAX_ANY_OF {
                return Err(ServiceError::too_large(format!(
                    "filter key {key:?}: {} values, at most {MAX_ANY_OF} are allowed",
                    items.len()
                )));
            }
            let list = items
                .iter()
                .map(|v| parse_scalar(key, v))
                .collect::<Result<_, _>>()?;
            Ok(Condition::AnyOf(list))
        }
        Value::Object(ops) => parse_range(key, ops).map(Condition::Range),
        v => parse_scalar(key, v).map(Condition::Equals),
    }
}

fn parse_scalar(key: &str, value: &Value) -> Result<Scalar, ServiceError> {
    match value {
        Value::String(s) => Ok(Scalar::String(s.clone())),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        Value::Number(n) => n.as_f64().map(Scalar::Number).ok_or_else(|| {
            ServiceError::bad_request(format!("filter key {key:?}: {n} is not a usable number"))
        }),
        other => Err(ServiceError::bad_request(format!(
            "filter key {key:?}: {} cannot be matched; use a string, number or boolean",
            kind_of(other)
        ))),
    }
}

fn parse_range(key: &str, ops: &Map<String, Value>) -> Result<Range, ServiceError> {
    if ops.is_empty() {
        return Err(ServiceError::bad_request(format!(
            "filter key {key:?}: empty range; give gt, gte, lt or lte"
        )));
    }
    let mut range = Range::default();
    for (op, bound) in ops {
        let n = bound.as_f64().ok_or_else(|| {
            ServiceError::bad_request(format!(
                "filter key {key:?}: range bound {op:?} must be a number"
            ))
        })?;
        let slot = match op.as_str() {
            "gt" => &mut range.gt,
            "gte" => &mut range.gte,
            "lt" => &mut range.lt,
            "lte" => &mut range.lte,
            other => {
                return Err(ServiceError::bad_request(format!(
                    "filter key {key:?}: unknown range operator {other:?} (use gt, gte, lt, lte)"
                )))
            }
        };
        *slot = Some(n);
    }
    Ok(range)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_three_kinds() {
        let f = Filter::parse(&json!({"category": "health"})).unwrap();
        assert!(f.matches(&meta(json!({"category": "health"}))));
        assert!(f.matches(&meta(json!({"category": ["sport", "health"]}))));
        assert!(!f.matches(&meta(json!({"category": "sport"}))));
        assert!(!f.matches(&meta(json!({}))));

        let f = Filter::parse(&json!({"category": ["health", "sport"]})).unwrap();
        assert!(f.matches(&meta(json!({"category": "sport"}))));
        assert!(!f.matches(&meta(json!({"category": "food"}))));

        let f = Filter::parse(&json!({"n": {"gte": 1, "lt": 5}})).unwrap();
        assert!(f.matches(&meta(json!({"n": 1}))));
        assert!(f.matches(&meta(json!({"n": 4.5}))));
        assert!(!f.matches(&meta(json!({"n": 5}))));
        assert!(!f.matches(&meta(json!({"n": "3"}))));
    }

    #[test]
    fn types_do_not_mix() {
        let f = Filter::parse(&json!({"x": 1})).unwrap();
        assert!(f.matches(&meta(json!({"x": 1.0}))));
        assert!(!f.matches(&meta(json!({"x": "1"}))));
        let f = Filter::parse(&json!({"x": true})).unwrap();
        assert!(!f.matches(&meta(json!({"x": 1}))));
    }

    #[test]
    fn refuses_the_ambiguous() {
        for bad in [
            json!({}),
            json!({"a": []}),
            json!({"a": {}}),
            json!({"a": {"eq": 1}}),
            json!({"a": {"gt": "x"}}),
            json!({"a": null}),
            json!({"a": {"gt": 1, "b": 2}}),
            json!({"a.b": 1}),
            json!([1]),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad}");
        }
    }
}
