//! Dead letters, from the operator's side: list the records the worker kept
//! in the dead-letter stream, and replay them into ingest once the cause is
//! fixed.
//!
//! Owns reading `TENANTVEC_DEADLETTER` (every record, or a tenant's, in
//! stream order) and the replay: the original body (and headers) published
//! again to the original ingest subject, and the record removed only once
//! JetStream has stored the replay, so a failed replay leaves the record
//! where it was. It must never change a record, nor remove one whose
//! message it has not stored again.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::names::Names;
use crate::tenant::TenantId;

/// A record as the worker writes it (`transport::ingest`).
#[derive(Debug, Deserialize)]
struct Record {
    subject: String,
    stream_seq: u64,
    error: Value,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Vec<String>>,
    /// Absent in records of versions that did not keep the message, and
    /// when encryption withheld it.
    #[serde(default)]
    body_base64: Option<String>,
    /// Sealed with the tenant's data key (opened by the worker that
    /// applies the replay; the header that says so is among `headers`).
    #[serde(default)]
    sealed: bool,
    #[serde(default)]
    body_withheld: Option<String>,
}

/// A record where it is kept: its sequence in the dead-letter stream.
struct Stored {
    seq: u64,
    record: Result<Record, String>,
}

/// Every record of `tenant` (all tenants when `None`), oldest first.
async fn read(
    js: &jetstream::Context,
    names: &Names,
    prefix: &str,
    tenant: Option<&TenantId>,
) -> Result<Vec<Stored>, ClientError> {
    let stream = js
        .get_stream(&names.deadletter_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.deadletter_stream))?;
    let filter = match tenant {
        Some(t) => format!("{prefix}.deadletter.{t}"),
        None => format!("{prefix}.deadletter.>"),
    };
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        match stream.get_first_raw_message_by_subject(&filter, next).await {
            Ok(message) => {
                next = message.sequence + 1;
                out.push(Stored {
                    seq: message.sequence,
                    record: serde_json::from_slice(&message.payload).map_err(|e| e.to_string()),
                });
            }
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(out),
            Err(e) => return Err(anyhow::anyhow!("cannot read {filter}: {e}").into()),
        }
    }
}

/// `tenantvec deadletters`: one line per record, without the body.
pub async fn list(client: &Client, tenant: Option<&TenantId>) -> Result<Value, ClientError> {
    let prefix = client.storage_prefix().to_owned();
    let js = jetstream::new(client.nats().clone());
    let records = read(&js, &Names::new(&prefix), &prefix, tenant).await?;
    let rows: Vec<Value> = records
        .into_iter()
        .map(|s| match s.record {
            Ok(r) => json!({
                "seq": s.seq,
                "subject": r.subject,
                "stream_seq": r.stream_seq,
                "error": r.error,
                "time": r.time,
                "bytes": r.body_base64.as_ref().map(|b| b.len() / 4 * 3),
                "replayable": r.body_base64.is_some(),
                "sealed": r.sealed,
                "body_withheld": r.body_withheld,
            }),
            Err(e) => json!({"seq": s.seq, "unreadable": e}),
        })
        .collect();
    Ok(json!({ "count": rows.len(), "deadletters": rows }))
}

/// `tenantvec deadletters replay`: publish each record's message again to
/// its ingest subject, then remove the record. With `seq`, that record only.
pub async fn replay(
    client: &Client,
    tenant: Option<&TenantId>,
    seq: Option<u64>,
) -> Result<Value, ClientError> {
    let prefix = client.storage_prefix().to_owned();
    let names = Names::new(&prefix);
    let js = jetstream::new(client.nats().clone());
    let stream = js
        .get_stream(&names.deadletter_stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", names.deadletter_stream))?;
    let ingest_prefix = format!("{prefix}.ingest.");
    let mut replayed = Vec::new();
    let mut skipped = Vec::new();
    for stored in read(&js, &names, &prefix, tenant).await? {
        if seq.is_some_and(|s| s != stored.seq) {
            continue;
        }
        let record = match stored.record {
            Ok(r) => r,
            Err(e) => {
                skipped.push(json!({"seq": stored.seq, "why": format!("unreadable: {e}")}));
                continue;
            }
        };
        let Some(body) = &record.body_base64 else {
            let why = match &record.body_withheld {
                Some(why) => format!("the record holds no message: {why}"),
                None => "the record holds no message".to_owned(),
            };
            skipped.push(json!({"seq": stored.seq, "why": why}));
            continue;
        };
        if !record.subject.starts_with(&ingest_prefix) {
            skipped.push(json!({"seq": stored.seq, "why": format!("{} is not an ingest subject", record.subject)}));
            continue;
        }
        let body = BASE64
            .decode(body)
            .map_err(|e| anyhow::anyhow!("record {}: bad body_base64: {e}", stored.seq))?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in &record.headers {
            // A replay is a new message: JetStream's de-duplication must
            // not take it for the original.
            if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                continue;
            }
            for value in values {
                headers.append(name.as_str(), value.as_str());
            }
        }
        // With regions, to the public subject: the workers send it to the
        // tenant's home, wherever that is now.
        let subject = match prefix == client.subjects().prefix() {
            true => record.subject.clone(),
            false => Names::new(client.subjects().prefix())
                .ingest_subject(crate::protocol::tenant_token(&record.subject)),
        };
        let ack = js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| anyhow::anyhow!("replay of record {}: {e}", stored.seq))?
            .await
            .map_err(|e| anyhow::anyhow!("replay of record {} not stored: {e}", stored.seq))?;
        stream
            .delete_message(stored.seq)
            .await
            .map_err(|e| anyhow::anyhow!("record {} replayed, but not removed: {e}", stored.seq))?;
        replayed.push(
            json!({"seq": stored.seq, "subject": record.subject, "ingest_seq": ack.sequence}),
        );
    }
    if let (Some(s), true) = (seq, replayed.is_empty() && skipped.is_empty()) {
        return Err(anyhow::anyhow!("no dead-letter record {s}").into());
    }
    Ok(json!({"replayed": replayed.len(), "records": replayed, "skipped": skipped}))
}
