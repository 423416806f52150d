//! With `encryption.enabled`, a dead letter's body is sealed with its
//! tenant's data key, and a replayed body (still sealed, marked by the
//! [`SEALED_HEADER`]) is opened again before it is applied.
//!
//! Owns that header and the two directions. It must never store a dead
//! letter's body in the clear while encryption is on, nor make a key to
//! open a body with (a tenant without a key has nothing sealed).

use crate::crypto::sealed;
use crate::protocol::ServiceError;
use crate::registry::keys::Keys;
use crate::tenant::TenantId;

/// The header of a message whose body is sealed with its tenant's data key:
/// a dead letter's body, published again by `deadletters replay`.
pub const SEALED_HEADER: &str = "Tenantvec-Sealed";

/// What a dead letter keeps of a message's body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KeptBody {
    /// As it came: encryption is off, or the body was sealed already.
    AsIs,
    /// Sealed with the tenant's data key (the record gains the header).
    Sealed(Vec<u8>),
    /// Not kept: encryption is on and the subject names no tenant, whose
    /// key could seal it (nor could it ever be applied if replayed).
    Withheld,
}

/// Whether a message carries a sealed body.
pub(super) fn is_sealed(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers.is_some_and(|h| h.get(SEALED_HEADER).is_some())
}

/// What to keep of `body` in a dead letter of `tenant`. `Err`: the key
/// cannot be had now; the message stays for another try.
pub(super) async fn keep_body(
    keys: Option<&Keys>,
    tenant: Option<&TenantId>,
    body: &[u8],
    already_sealed: bool,
) -> Result<KeptBody, ServiceError> {
    let Some(keys) = keys else {
        return Ok(KeptBody::AsIs);
    };
    if already_sealed {
        return Ok(KeptBody::AsIs);
    }
    let Some(tenant) = tenant else {
        return Ok(KeptBody::Withheld);
    };
    // A dead letter is the tenant's data: its key is made if it has none.
    let key = keys.data_key(tenant.as_str()).await?;
    sealed::seal(&key, tenant.as_str(), body)
        .map(KeptBody::Sealed)
        .map_err(|e| ServiceError::internal(format!("tenant {tenant}: sealing a dead letter: {e}")))
}

/// The plaintext of a replayed body sealed for `tenant`. Every failure is
/// final (the message is dead-lettered again, still sealed).
pub(super) async fn open_body(
    keys: Option<&Keys>,
    tenant: &TenantId,
    body: &[u8],
) -> Result<Vec<u8>, ServiceError> {
    let Some(keys) = keys else {
        return Err(ServiceError::bad_request(format!(
            "tenant {tenant}: this message's body is sealed with the tenant's data key \
             (a replayed dead letter), and this worker has encryption off"
        )));
    };
    let Some(stored) = keys.store.get(tenant.as_str()).await? else {
        return Err(ServiceError::bad_request(format!(
            "tenant {tenant}: this message's body is sealed with a data key the tenant no \
             longer has (destroyed by a drop): it cannot be applied"
        )));
    };
    let key = keys
        .keyring
        .open(tenant.as_str(), &stored.wrapped)
        .await
        .map_err(|e| ServiceError::unavailable(format!("tenant {tenant}: {e}")))?;
    sealed::open(&key, tenant.as_str(), body)
        .map_err(|e| ServiceError::bad_request(format!("tenant {tenant}: its sealed body: {e}")))
}
