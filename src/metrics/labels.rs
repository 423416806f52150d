//! The label values of the worker's series: verbs, outcome codes, store
//! operations and embedder purposes, each a fixed list made at start.
//!
//! Owns which values a label may take and each value's index. It must
//! never let a tenant or any other unbounded value become a label: the
//! number of series must not grow with the number of tenants.

use crate::embed::Purpose;
use crate::protocol::{Addressed, AdminVerb, ErrorCode, Verb};

/// The `verb` label of a request: the tenant verbs, the admin verbs, and
/// whatever else arrived on the request subject.
pub(super) const VERBS: [&str; 13] = [
    "upsert",
    "search",
    "get",
    "delete",
    "count",
    "drop",
    "export",
    "import",
    "rekey",
    "admin_stats",
    "admin_cleanup",
    "admin_evict",
    "unknown",
];

pub(super) fn verb_index(addressed: Addressed<'_>) -> usize {
    match addressed {
        Addressed::Tenant(verb, _) => match verb {
            Verb::Upsert => 0,
            Verb::Search => 1,
            Verb::Get => 2,
            Verb::Delete => 3,
            Verb::Count => 4,
            Verb::Drop => 5,
            Verb::Export => 6,
            Verb::Import => 7,
            Verb::Rekey => 8,
        },
        Addressed::Admin(verb) => match verb {
            AdminVerb::Stats => 9,
            AdminVerb::Cleanup => 10,
            AdminVerb::Evict => 11,
        },
        Addressed::Stream | Addressed::Unknown => 12,
    }
}

/// The `code` label of a request's outcome: `ok`, or its error code.
pub(super) const CODES: [&str; 10] = [
    "ok",
    "invalid_tenant",
    "bad_request",
    "dimension_mismatch",
    "too_large",
    "quota_exceeded",
    "rate_limited",
    "unavailable",
    "internal",
    "unknown_tenant",
];

pub(super) fn code_index(code: Option<ErrorCode>) -> usize {
    match code {
        None => 0,
        Some(ErrorCode::InvalidTenant) => 1,
        Some(ErrorCode::BadRequest) => 2,
        Some(ErrorCode::DimensionMismatch) => 3,
        Some(ErrorCode::TooLarge) => 4,
        Some(ErrorCode::QuotaExceeded) => 5,
        Some(ErrorCode::RateLimited) => 6,
        Some(ErrorCode::Unavailable) => 7,
        Some(ErrorCode::Internal) => 8,
        Some(ErrorCode::UnknownTenant) => 9,
    }
}

/// The `op` label of a store call.
#[derive(Clone, Copy)]
pub(super) enum Op {
    Dimension,
    Upsert,
    Search,
    Get,
    Delete,
    Count,
    Drop,
    Maintain,
    Close,
    Scroll,
    Replace,
}

pub(super) const OPS: [&str; 11] = [
    "dimension",
    "upsert",
    "search",
    "get",
    "delete",
    "count",
    "drop",
    "maintain",
    "close",
    "scroll",
    "replace",
];

/// The `purpose` label of an embedder call.
pub(super) const PURPOSES: [&str; 2] = ["query", "document"];

pub(super) fn purpose_index(purpose: Purpose) -> usize {
    match purpose {
        Purpose::Query => 0,
        Purpose::Document => 1,
    }
}

pub(super) type Labels1 = [(&'static str, &'static str); 1];
pub(super) type Labels2 = [(&'static str, &'static str); 2];
