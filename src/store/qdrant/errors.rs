//! A Qdrant server's failures as our error codes: what the caller may retry
//! (`unavailable`: the server is away or slow) and what it may not
//! (`internal`), and the two outcomes a store expects (a missing collection,
//! one made already).
//!
//! Owns that classification. It must never answer `internal` for a failure
//! that passes when the server is back.

use qdrant_client::QdrantError;

use crate::protocol::ServiceError;
use crate::store::internal;

/// Whether Qdrant answered that the collection does not exist.
pub(super) fn is_missing(e: &QdrantError) -> bool {
    matches!(e, QdrantError::ResponseError { status } if status.code() == tonic_code::NotFound)
}

/// Whether a create failed because the collection is already there.
pub(super) fn is_already_there(e: &QdrantError) -> bool {
    matches!(e, QdrantError::ResponseError { status }
        if status.code() == tonic_code::AlreadyExists
            || status.message().contains("already exists"))
}

/// How qdrant-client begins the message of a failed connection attempt.
pub(super) const CONNECT_FAILED: &str = "Failed to connect to";

/// gRPC status codes of the client's errors.
pub(super) mod tonic_code {
    pub use tonic::Code::*;
}

/// A Qdrant failure as a protocol error: the server being unreachable,
/// slow or overloaded is `unavailable` (retry later; ingest `nak`s it), a
/// request it refuses is `bad_request` with its reason, refused credentials
/// are `internal` with a pointer to the API key (the worker's fault, not the
/// caller's; ingest retries until it is fixed), the rest `internal`.
pub(super) fn classify(who: &str, url: &str, what: &str, e: QdrantError) -> ServiceError {
    use tonic_code as c;
    let transient = match &e {
        QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                c::Unavailable | c::DeadlineExceeded | c::Cancelled | c::Aborted | c::Unknown
            )
            // qdrant-client reports a connection that cannot be made as
            // `Internal` with this message, not as `Unavailable`.
            || (status.code() == c::Internal && status.message().starts_with(CONNECT_FAILED))
        }
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => true,
        _ => false,
    };
    if transient {
        tracing::warn!(%who, %url, error = %e, "qdrant unavailable: {what}");
        return ServiceError::unavailable(format!(
            "{who}: {what}: the Qdrant server at {url} cannot be reached or is overloaded; retry later"
        ));
    }
    match &e {
        QdrantError::ResponseError { status }
            if matches!(status.code(), c::Unauthenticated | c::PermissionDenied) =>
        {
            tracing::error!(%who, %url, error = %e, "qdrant refused the worker's credentials");
            ServiceError::internal(format!(
                "{who}: {what}: the Qdrant server at {url} refused the worker's credentials \
                 (check QDRANT_API_KEY)"
            ))
        }
        QdrantError::ResponseError { status } if status.code() == c::InvalidArgument => {
            ServiceError::bad_request(format!(
                "{who}: {what}: Qdrant refused it: {}",
                status.message()
            ))
        }
        _ => internal(who, what, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        use crate::protocol::ErrorCode::*;
        let cases = [
            (tonic::Status::unavailable("tcp connect error"), Unavailable),
            (tonic::Status::deadline_exceeded("slow"), Unavailable),
            (
                tonic::Status::internal("Failed to connect to http://x/: refused"),
                Unavailable,
            ),
            (tonic::Status::internal("segment broke"), Internal),
            (tonic::Status::invalid_argument("bad"), BadRequest),
            (tonic::Status::unauthenticated("no key"), Internal),
        ];
        for (status, want) in cases {
            let e = classify(
                "t",
                "http://x",
                "search",
                QdrantError::ResponseError { status },
            );
            assert_eq!(e.code, want, "{e:?}");
        }
    }
}
