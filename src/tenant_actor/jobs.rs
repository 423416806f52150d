//! A tenant's jobs as the blocking pool runs them: a group commit of
//! upserts and ingest messages (each request checked on its own, the quota
//! counted across them, every request answered with the one write's
//! outcome), and every other command applied to the open store.
//!
//! Owns what a job does to the store. It must never know of the actor's
//! mailbox, its thread or the pool: it is plain functions over a
//! [`TenantStore`], tested without an actor.

use std::collections::HashMap;

use crate::command::{Command, Envelope, QueryInput, ReplyTo};
use crate::embed::Embedding;
use crate::protocol::{Doc, Reply, ServiceError};
use crate::store::{AppliedMark, Record, SearchQuery, TenantStore};
use crate::tenant::TenantId;

/// The tenant's limits a job applies.
pub(super) struct JobLimits {
    /// `top_k` of a search that gives none.
    pub(super) top_k: usize,
    /// The document quota.
    pub(super) max_documents: Option<u64>,
    /// The tenant's data key (`encryption.enabled`): exports are sealed
    /// with it, sealed imports opened.
    pub(super) key: Option<std::sync::Arc<crate::crypto::DataKey>>,
}

/// What one job does on the blocking pool.
pub(super) enum Work {
    Batch(Vec<Envelope>),
    Maintain,
    Close,
}

impl Work {
    pub(super) fn apply(
        self,
        tenant: &TenantId,
        store: &mut dyn TenantStore,
        embedding: &Embedding,
        limits: &JobLimits,
    ) {
        match self {
            Work::Batch(batch) if batch[0].command.is_upsert() => {
                apply_upserts(tenant, store, embedding, batch, limits.max_documents)
            }
            Work::Batch(batch) => {
                for env in batch {
                    let _entered = env.span.enter();
                    let key = limits.key.as_deref();
                    let result = match env.command {
                        Command::Export(r) => crate::backup::export(store, embedding, r, key),
                        Command::Import(r) => crate::backup::import(store, embedding, r, key),
                        // The rotation itself ran before the job (the
                        // actor's key step); this answers with its key.
                        Command::Rekey => match key {
                            Some(key) => Ok(Reply::Rekeyed {
                                rekeyed: true,
                                key_version: key.version(),
                            }),
                            None => Err(ServiceError::internal("a key rotation without a key")),
                        },
                        command => apply_one(store, embedding, command, limits.top_k),
                    };
                    env.reply.send(result);
                }
            }
            Work::Maintain => match store.maintain() {
                Ok(true) => tracing::info!(%tenant, "store optimized"),
                Ok(false) => {}
                Err(e) => tracing::warn!(%tenant, error = %e, "maintenance failed"),
            },
            Work::Close => {
                if let Err(e) = store.close() {
                    tracing::error!(%tenant, error = %e, "closing the store failed");
                }
            }
        }
    }
}

/// One request's documents inside a group commit, with where its outcome goes.
pub(super) struct Write {
    docs: Vec<Doc>,
    reply: ReplyTo,
    span: tracing::Span,
    /// The ingest envelope it came from: a transient failure stops the
    /// later parts of the same envelope.
    chain: Option<usize>,
    /// The ingest message it is (none for a request's upsert).
    message: Option<AppliedMark>,
}

/// Split a batch of upsert and ingest envelopes into their writes, in order.
/// An ingest envelope's own reply gets the outcome of the whole write.
pub(super) fn writes(batch: Vec<Envelope>) -> (Vec<Write>, Vec<ReplyTo>) {
    let mut writes = Vec::new();
    let mut envelope_replies = Vec::new();
    for (i, env) in batch.into_iter().enumerate() {
        match env.command {
            Command::Upsert(docs) => writes.push(Write {
                docs,
                reply: env.reply,
                span: env.span,
                chain: None,
                message: None,
            }),
            Command::Ingest(parts) => {
                for part in parts {
                    writes.push(Write {
                        docs: part.docs,
                        reply: part.reply,
                        span: env.span.clone(),
                        chain: Some(i),
                        message: Some(part.message),
                    });
                }
                envelope_replies.push(env.reply);
            }
            _ => env.fail(ServiceError::internal("not a write in a write batch")),
        }
    }
    (writes, envelope_replies)
}

/// Apply several upsert requests (and ingest messages) as one write: each
/// is checked on its own (a bad one, or one that would take the tenant over
/// its quota, fails alone), the good ones are written together, and every
/// request gets the outcome of that one write. The quota counts a request's
/// documents only once it has passed every other check, so a refused
/// request never uses up room a later one needs.
///
/// Ingest messages move the tenant's applied mark in the same write; one
/// the mark covers already (written before, by this worker or one that
/// died before its ack) is answered as written and not written again, so
/// an old version never lands over a newer one.
pub(super) fn apply_upserts(
    tenant: &TenantId,
    store: &mut dyn TenantStore,
    embedding: &Embedding,
    batch: Vec<Envelope>,
    quota: Option<u64>,
) {
    let write_span = batch[0].span.clone();
    let (writes, envelope_replies) = writes(batch);
    let fail_all = |writes: Vec<Write>, replies: Vec<ReplyTo>, e: &ServiceError| {
        for w in writes {
            w.reply.send(Err(e.clone()));
        }
        for r in replies {
            r.send(Err(e.clone()));
        }
    };
    let dimension = match store.dimension() {
        Ok(d) => d,
        Err(e) => return fail_all(writes, envelope_replies, &e),
    };
    let mut quota = match quota.map(|q| Quota::new(tenant, store, q)).transpose() {
        Ok(q) => q,
        Err(e) => return fail_all(writes, envelope_replies, &e),
    };
    let stored = match writes.iter().any(|w| w.message.is_some()) {
        true => match store.applied_mark() {
            Ok(m) => m,
            Err(e) => return fail_all(writes, envelope_replies, &e),
        },
        false => None,
    };
    let mut mark = None;
    let mut records = Vec::new();
    let mut accepted = Vec::with_capacity(writes.len());
    // Ingest envelopes stopped by a transient failure, with that failure.
    let mut stopped: HashMap<usize, ServiceError> = HashMap::new();
    for w in writes {
        let _entered = w.span.enter();
        if let Some(e) = w.chain.and_then(|c| stopped.get(&c)) {
            w.reply.send(Err(e.with_message(format!(
                "not applied: an earlier message failed first ({})",
                e.message
            ))));
            continue;
        }
        let n = w.docs.len();
        if let (Some(m), Some(s)) = (&w.message, &stored) {
            if s.covers(&m.stream, m.seq) {
                tracing::warn!(
                    %tenant,
                    seq = m.seq,
                    applied = s.seq,
                    "an ingest message the store holds already came again; answered as written, not written again"
                );
                w.reply.send(Ok(Reply::Upserted { upserted: n }));
                continue;
            }
        }
        let checked = to_records(w.docs, dimension, embedding).and_then(|r| {
            if let Some(q) = quota.as_mut() {
                q.admit(store, &r)?;
            }
            Ok(r)
        });
        match checked {
            Ok(mut r) => {
                records.append(&mut r);
                accepted.push((w.reply, n));
                if let Some(m) = &w.message {
                    mark = Some(AppliedMark::advanced(mark.as_ref().or(stored.as_ref()), m));
                }
            }
            Err(e) => {
                if let (Some(c), true) = (w.chain, e.code.is_transient()) {
                    stopped.insert(c, e.clone());
                }
                w.reply.send(Err(e));
            }
        }
    }
    // A doc_id written twice in one write: the last one wins.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        last.insert(r.doc_id.as_str(), i);
    }
    let records: Vec<Record> = if last.len() == records.len() {
        records
    } else {
        let keep: Vec<bool> = (0..records.len())
            .map(|i| last.get(records[i].doc_id.as_str()) == Some(&i))
            .collect();
        records
            .into_iter()
            .zip(keep)
            .filter_map(|(r, k)| k.then_some(r))
            .collect()
    };
    let outcome = write_span
        .in_scope(|| match (&mark, records.is_empty()) {
            (None, true) => Ok(()),
            (mark, _) => store.write(records, mark.as_ref()),
        })
        .and_then(|()| embedding.record());
    let mut total = 0;
    for (reply, n) in accepted {
        total += n;
        reply.send(outcome.clone().map(|()| Reply::Upserted { upserted: n }));
    }
    for reply in envelope_replies {
        reply.send(
            outcome
                .clone()
                .map(|()| Reply::Upserted { upserted: total }),
        );
    }
}

/// A tenant's document quota, counted across the requests of one write.
pub(super) struct Quota {
    limit: u64,
    held: u64,
    /// doc_ids this write adds that the store does not hold yet.
    adding: std::collections::HashSet<String>,
    tenant: String,
}

impl Quota {
    fn new(
        tenant: &TenantId,
        store: &mut dyn TenantStore,
        limit: u64,
    ) -> Result<Self, ServiceError> {
        Ok(Self {
            limit,
            held: store.count(None)? as u64,
            adding: std::collections::HashSet::new(),
            tenant: tenant.to_string(),
        })
    }

    /// Count the request's new documents in, or refuse it whole.
    fn admit(&mut self, store: &mut dyn TenantStore, docs: &[Record]) -> Result<(), ServiceError> {
        let ids: Vec<String> = docs
            .iter()
            .map(|d| d.doc_id.clone())
            .filter(|id| !self.adding.contains(id))
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let existing: std::collections::HashSet<String> = store
            .get(&ids, false)?
            .into_iter()
            .map(|d| d.doc_id)
            .collect();
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !existing.contains(id))
            .collect();
        let after = self.held + self.adding.len() as u64 + new.len() as u64;
        if after > self.limit {
            return Err(ServiceError::quota_exceeded(format!(
                "tenant {} would hold {after} documents, its quota is {}",
                self.tenant, self.limit
            )));
        }
        self.adding.extend(new);
        Ok(())
    }
}

/// The documents as records: vectors checked, and made for those that came
/// with text only, all of a request's texts in one call to the embedder.
pub(super) fn to_records(
    docs: Vec<Doc>,
    dimension: usize,
    embedding: &Embedding,
) -> Result<Vec<Record>, ServiceError> {
    if let Some(doc) = docs.iter().find(|d| d.vector.is_none() && d.text.is_none()) {
        return Err(ServiceError::bad_request(format!(
            "document {:?} has neither text nor vector",
            doc.doc_id
        )));
    }
    let texts: Vec<&str> = docs
        .iter()
        .filter(|d| d.vector.is_none())
        .filter_map(|d| d.text.as_deref())
        .collect();
    let mut made = if texts.is_empty() {
        Vec::new()
    } else {
        embedding.documents(&texts, dimension)?
    }
    .into_iter();
    docs.into_iter()
        .map(|doc| {
            let vector = match doc.vector {
                Some(v) => v,
                None => made
                    .next()
                    .ok_or_else(|| ServiceError::internal("the embedder made too few vectors"))?,
            };
            if vector.len() != dimension {
                return Err(ServiceError::dimension_mismatch(format!(
                    "document {:?}: vector has {} dimensions, the tenant's store has {dimension}",
                    doc.doc_id,
                    vector.len()
                )));
            }
            Ok(Record {
                doc_id: doc.doc_id,
                text: doc.text,
                metadata: doc.metadata,
                vector,
            })
        })
        .collect()
}

pub(super) fn apply_one(
    store: &mut dyn TenantStore,
    embedding: &Embedding,
    command: Command,
    default_top_k: usize,
) -> Result<Reply, ServiceError> {
    match command {
        Command::Upsert(_) | Command::Ingest(_) => {
            Err(ServiceError::internal("a write outside a write batch"))
        }
        Command::Search(s) => {
            let vector = match s.input {
                QueryInput::Vector(v) => v,
                QueryInput::Text(text) => embedding.query(&text, store.dimension()?)?,
            };
            let query = SearchQuery {
                vector,
                top_k: s.top_k.unwrap_or(default_top_k),
                filter: s.filter,
                with_vectors: s.with_vectors,
            };
            Ok(Reply::Results {
                results: store.search(&query)?,
            })
        }
        Command::Get {
            doc_ids,
            with_vectors,
            ..
        } => Ok(Reply::Documents {
            documents: store.get(&doc_ids, with_vectors)?,
        }),
        Command::Delete(selector) => Ok(Reply::Deleted {
            deleted: store.delete(&selector)?,
        }),
        Command::Count(filter) => Ok(Reply::Count {
            count: store.count(filter.as_ref())?,
        }),
        Command::Drop => {
            store.drop_tenant()?;
            embedding.forget()?;
            Ok(Reply::Dropped { dropped: true })
        }
        // Jobs of their own (`Work::apply`), with the tenant's key.
        Command::Export(_) | Command::Import(_) | Command::Rekey => Err(ServiceError::internal(
            "an export, import or key rotation outside its job",
        )),
    }
}

/// Bytes of the files under `dir`, `None` when it cannot be read (no
/// folder: a layout without one per tenant).
pub(super) fn folder_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::IngestPart;
    use crate::config::Settings;
    use crate::embed::HashingEmbedder;
    use crate::embed::{record, Embedder, Purpose};
    use crate::store::StoreFactory;
    use crate::tenant::TenantPaths;
    use serde_json::Map;

    const DIM: usize = 8;

    fn doc(id: &str, dim: usize) -> Doc {
        Doc {
            doc_id: id.into(),
            text: None,
            metadata: Map::new(),
            vector: Some(vec![0.5; dim]),
        }
    }

    fn envelope(
        tenant: &TenantId,
        command: Command,
    ) -> (Envelope, tokio::sync::oneshot::Receiver<ReplyOutcome>) {
        let (reply, outcome) = ReplyTo::channel();
        let env = Envelope {
            tenant: tenant.clone(),
            command,
            reply,
            span: tracing::Span::none(),
        };
        (env, outcome)
    }

    type ReplyOutcome = Result<Reply, ServiceError>;

    /// A document the store holds before the write under test.
    fn old_record() -> Record {
        Record {
            doc_id: "old".into(),
            text: None,
            metadata: Map::new(),
            vector: vec![0.5; DIM],
        }
    }

    fn store(dir: &std::path::Path, tenant: &TenantId) -> Box<dyn TenantStore> {
        let mut settings = Settings::defaults();
        settings.store.folder = dir.to_owned();
        settings.store.dimension = DIM;
        crate::store::edge::EdgeFactory::new(&settings)
            .unwrap()
            .open(tenant)
    }

    /// The embedder records of tenants under `dir` (the per-tenant layout's).
    fn records(dir: &std::path::Path) -> record::Records {
        record::Records::new(TenantPaths::new(dir), true)
    }

    /// A request refused for a bad vector reserves nothing: a valid request
    /// in the same group commit still fits the quota.
    #[test]
    fn a_folder_s_bytes_are_its_files_all_the_way_down() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(folder_bytes(dir.path()), Some(15));
        assert_eq!(folder_bytes(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_refused_request_takes_no_quota() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::parse("q").unwrap();
        let mut store = store(dir.path(), &tenant);
        store.upsert(vec![old_record()]).unwrap();
        let (bad, bad_reply) = envelope(&tenant, Command::Upsert(vec![doc("new-bad", DIM + 1)]));
        let (good, good_reply) = envelope(&tenant, Command::Upsert(vec![doc("new-good", DIM)]));
        let embedder = HashingEmbedder::new(DIM);
        let records = records(dir.path());
        let embedding = Embedding::new(&embedder, &records, &tenant);
        apply_upserts(
            &tenant,
            store.as_mut(),
            &embedding,
            vec![bad, good],
            Some(2),
        );
        let bad = bad_reply.blocking_recv().unwrap().unwrap_err();
        assert_eq!(bad.code, crate::protocol::ErrorCode::DimensionMismatch);
        assert!(good_reply.blocking_recv().unwrap().is_ok());
        assert_eq!(store.count(None).unwrap(), 2);
    }

    /// The hashing embedder, except that the text "down" finds it
    /// unavailable, as a remote embedder in an outage would be.
    struct Outage(HashingEmbedder);

    impl Embedder for Outage {
        fn name(&self) -> &str {
            "outage"
        }
        fn dimension(&self) -> usize {
            self.0.dimension()
        }
        fn embed(&self, texts: &[&str], purpose: Purpose) -> Result<Vec<Vec<f32>>, ServiceError> {
            if texts.contains(&"down") {
                return Err(ServiceError::unavailable("the embedder is down"));
            }
            self.0.embed(texts, purpose)
        }
    }

    /// Inside an ingest command, a part that fails for a reason that may pass
    /// stops the parts after it (not written, answered with the same code);
    /// a permanent failure stops nothing.
    #[test]
    fn an_ingest_part_failing_transiently_stops_the_later_parts() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::parse("i").unwrap();
        let mut store = store(dir.path(), &tenant);
        let with_text = |id: &str, text: Option<&str>| Doc {
            text: text.map(str::to_owned),
            vector: None,
            ..doc(id, DIM)
        };
        let mut replies = Vec::new();
        let mut parts = Vec::new();
        for docs in [
            vec![doc("a", DIM)],
            vec![with_text("b", None)],
            vec![doc("c", DIM)],
            vec![with_text("d", Some("down"))],
            vec![doc("e", DIM)],
        ] {
            let (reply, outcome) = ReplyTo::channel();
            let message = AppliedMark::new("S@1".into(), replies.len() as u64 + 1);
            parts.push(IngestPart {
                docs,
                reply,
                message,
            });
            replies.push(outcome);
        }
        let (env, _) = envelope(&tenant, Command::Ingest(parts));
        let embedder = Outage(HashingEmbedder::new(DIM));
        let records = records(dir.path());
        let embedding = Embedding::new(&embedder, &records, &tenant);
        apply_upserts(&tenant, store.as_mut(), &embedding, vec![env], None);
        use crate::protocol::ErrorCode;
        let codes: Vec<Option<ErrorCode>> = replies
            .into_iter()
            .map(|r| r.blocking_recv().unwrap().err().map(|e| e.code))
            .collect();
        assert_eq!(
            codes,
            vec![
                None,
                Some(ErrorCode::BadRequest),
                None,
                Some(ErrorCode::Unavailable),
                Some(ErrorCode::Unavailable),
            ]
        );
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let stored: Vec<String> = store
            .get(&ids, false)
            .unwrap()
            .into_iter()
            .map(|d| d.doc_id)
            .collect();
        assert_eq!(stored, vec!["a", "c"]);
    }

    mod over_memory {
        //! The job logic against [`MemoryStore`]: group commit, last write
        //! wins, the quota and the embedder, without shards on disk.

        use super::*;
        use crate::command::SearchCommand;
        use crate::filter::Filter;
        use crate::store::memory::MemoryStore;
        use crate::store::Selector;

        fn text_doc(id: &str, text: &str) -> Doc {
            Doc {
                doc_id: id.into(),
                text: Some(text.into()),
                metadata: Map::new(),
                vector: None,
            }
        }

        /// A data folder (kept while the test runs), a tenant, the hashing
        /// embedder and the folder's embedder records.
        fn setup() -> (
            tempfile::TempDir,
            TenantId,
            HashingEmbedder,
            record::Records,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let records = records(dir.path());
            (
                dir,
                TenantId::parse("m").unwrap(),
                HashingEmbedder::new(DIM),
                records,
            )
        }

        /// Three upserts become one write; each gets its own count, and a
        /// doc_id written twice keeps the later version.
        #[test]
        fn upserts_are_one_write_and_the_last_version_wins() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let (a, ra) = envelope(&tenant, Command::Upsert(vec![text_doc("x", "first")]));
            let (b, rb) = envelope(
                &tenant,
                Command::Upsert(vec![text_doc("y", "other"), text_doc("x", "second")]),
            );
            let (c, rc) = envelope(&tenant, Command::Upsert(vec![doc("z", DIM)]));
            apply_upserts(&tenant, &mut store, &embedding, vec![a, b, c], None);
            let upserted = |r: tokio::sync::oneshot::Receiver<ReplyOutcome>| match r
                .blocking_recv()
                .unwrap()
                .unwrap()
            {
                Reply::Upserted { upserted } => upserted,
                other => panic!("{other:?}"),
            };
            assert_eq!((upserted(ra), upserted(rb), upserted(rc)), (1, 2, 1));
            assert_eq!(store.writes, 1, "one group commit");
            let got = store.get(&["x".into()], false).unwrap();
            assert_eq!(got[0].text.as_deref(), Some("second"));
            assert_eq!(store.count(None).unwrap(), 3);
            // The embedder made the text documents' vectors and is recorded.
            assert_eq!(records.read(&tenant).unwrap().unwrap().model, "hashing");
        }

        /// The quota counts new documents only, across the requests of one
        /// write: the request that would pass it fails alone.
        #[test]
        fn the_quota_refuses_only_the_request_past_it() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            store.upsert(vec![old_record()]).unwrap();
            let (a, ra) = envelope(
                &tenant,
                Command::Upsert(vec![doc("old", DIM), doc("n1", DIM)]),
            );
            let (b, rb) = envelope(&tenant, Command::Upsert(vec![doc("n2", DIM)]));
            let (c, rc) = envelope(&tenant, Command::Upsert(vec![doc("n1", DIM)]));
            apply_upserts(&tenant, &mut store, &embedding, vec![a, b, c], Some(2));
            assert!(ra.blocking_recv().unwrap().is_ok());
            let refused = rb.blocking_recv().unwrap().unwrap_err();
            assert_eq!(refused.code, crate::protocol::ErrorCode::QuotaExceeded);
            assert!(rc.blocking_recv().unwrap().is_ok(), "n1 is not new");
            assert_eq!(store.count(None).unwrap(), 2);
        }

        /// Reads and deletes through `apply_one`: the tenant's default
        /// top_k, filters, text queries through the embedder.
        #[test]
        fn reads_and_deletes_apply_the_tenant_s_defaults() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let docs: Vec<Doc> = (0..5)
                .map(|i| {
                    let mut d = text_doc(&format!("d{i}"), &format!("note number {i}"));
                    d.metadata.insert("even".into(), (i % 2 == 0).into());
                    d
                })
                .collect();
            let (env, _) = envelope(&tenant, Command::Upsert(docs));
            apply_upserts(&tenant, &mut store, &embedding, vec![env], None);
            let search = |input, filter: Option<Filter>| {
                Command::Search(SearchCommand {
                    input,
                    top_k: None,
                    filter,
                    with_vectors: false,
                    encoding: Default::default(),
                })
            };
            let results = |reply| match reply {
                Ok(Reply::Results { results }) => results,
                other => panic!("{other:?}"),
            };
            let text = QueryInput::Text("note number 3".into());
            let hits = results(apply_one(&mut store, &embedding, search(text, None), 2));
            assert_eq!(hits.len(), 2, "the tenant's default top_k");
            assert_eq!(hits[0].doc_id, "d3");
            let even = Filter::parse(&serde_json::json!({"even": true})).unwrap();
            let vector = QueryInput::Vector(embedder.vector("note number 3").unwrap());
            let hits = results(apply_one(
                &mut store,
                &embedding,
                search(vector, Some(even.clone())),
                10,
            ));
            assert_eq!(hits.len(), 3);
            assert!(hits.iter().all(|h| h.metadata["even"] == true));
            let deleted = apply_one(
                &mut store,
                &embedding,
                Command::Delete(Selector::Filter(even)),
                5,
            );
            assert_eq!(deleted, Ok(Reply::Deleted { deleted: 3 }));
            assert_eq!(
                apply_one(&mut store, &embedding, Command::Count(None), 5),
                Ok(Reply::Count { count: 2 })
            );
        }

        /// Ingest messages as one command, each a version of document `d`.
        fn ingest(
            tenant: &TenantId,
            stream: &str,
            seqs: &[u64],
        ) -> (Envelope, Vec<tokio::sync::oneshot::Receiver<ReplyOutcome>>) {
            let mut parts = Vec::new();
            let mut replies = Vec::new();
            for &seq in seqs {
                let (reply, outcome) = ReplyTo::channel();
                parts.push(IngestPart {
                    docs: vec![text_doc("d", &format!("version {seq}"))],
                    reply,
                    message: AppliedMark::new(stream.into(), seq),
                });
                replies.push(outcome);
            }
            (envelope(tenant, Command::Ingest(parts)).0, replies)
        }

        fn text_of_d(store: &mut MemoryStore) -> String {
            store.get(&["d".into()], false).unwrap()[0]
                .text
                .clone()
                .unwrap()
        }

        /// The applied mark moves with the write that holds its messages;
        /// a message it covers (its ack was lost, and it came again after
        /// later ones) is answered as written and never lands over them.
        #[test]
        fn a_message_the_mark_covers_is_answered_and_not_written_again() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let (batch, replies) = ingest(&tenant, "S@1", &[4, 7]);
            apply_upserts(&tenant, &mut store, &embedding, vec![batch], None);
            assert!(replies
                .into_iter()
                .all(|r| r.blocking_recv().unwrap().is_ok()));
            assert_eq!(store.mark, Some(AppliedMark::new("S@1".into(), 7)));
            assert_eq!(
                (text_of_d(&mut store), store.writes),
                ("version 7".into(), 1)
            );

            // 4 comes again alone: answered as written, no write at all.
            let (again, replies) = ingest(&tenant, "S@1", &[4]);
            apply_upserts(&tenant, &mut store, &embedding, vec![again], None);
            let answer = replies.into_iter().next().unwrap().blocking_recv().unwrap();
            assert_eq!(answer, Ok(Reply::Upserted { upserted: 1 }));
            assert_eq!(
                (text_of_d(&mut store), store.writes),
                ("version 7".into(), 1)
            );

            // 7 again beside the new 9: only 9 is written, and the mark moves to it.
            let (mixed, _) = ingest(&tenant, "S@1", &[7, 9]);
            apply_upserts(&tenant, &mut store, &embedding, vec![mixed], None);
            assert_eq!(text_of_d(&mut store), "version 9");
            assert_eq!(store.mark, Some(AppliedMark::new("S@1".into(), 9)));
        }

        /// A stream made again starts its sequences over: the old mark says
        /// nothing of its messages, which are written.
        #[test]
        fn a_mark_of_another_stream_covers_nothing() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let (old, _) = ingest(&tenant, "S@1", &[50]);
            apply_upserts(&tenant, &mut store, &embedding, vec![old], None);
            let (new, _) = ingest(&tenant, "S@2", &[3]);
            apply_upserts(&tenant, &mut store, &embedding, vec![new], None);
            assert_eq!(text_of_d(&mut store), "version 3");
            assert_eq!(store.mark, Some(AppliedMark::new("S@2".into(), 3)));
        }

        /// A request's upsert leaves the mark where it was.
        #[test]
        fn a_request_s_upsert_keeps_the_mark() {
            let (_dir, tenant, embedder, records) = setup();
            let embedding = Embedding::new(&embedder, &records, &tenant);
            let mut store = MemoryStore::new(DIM);
            let (batch, _) = ingest(&tenant, "S@1", &[5]);
            apply_upserts(&tenant, &mut store, &embedding, vec![batch], None);
            let (upsert, _) = envelope(&tenant, Command::Upsert(vec![text_doc("d", "request")]));
            apply_upserts(&tenant, &mut store, &embedding, vec![upsert], None);
            assert_eq!(text_of_d(&mut store), "request");
            assert_eq!(store.mark, Some(AppliedMark::new("S@1".into(), 5)));
        }
    }
}
