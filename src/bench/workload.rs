//! The workload's files: documents, queries and the true neighbours, read
//! once before any clock starts; and the documents with their vectors as
//! base64, written once beside the originals.
//!
//! Owns reading and converting them. It must never time anything.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub(super) struct Query {
    pub(super) qid: u64,
    pub(super) tenant: String,
    pub(super) top_k: usize,
    pub(super) filter: Option<Value>,
    pub(super) vector: Vec<f32>,
}

/// A query ready to send: its body serialised before any clock starts.
pub(super) struct Prepared {
    pub(super) qid: u64,
    pub(super) tenant: String,
    pub(super) filtered: bool,
    pub(super) body: Bytes,
}

/// Every line of a JSON-lines file, parsed.
pub(super) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .map(|line| Ok(serde_json::from_str(&line?)?))
        .collect()
}

pub(super) fn read_queries(path: &Path) -> anyhow::Result<Vec<Prepared>> {
    read_jsonl::<Query>(path)?
        .into_iter()
        .map(|q| {
            let mut body = json!({"vector": q.vector, "top_k": q.top_k});
            if let Some(f) = &q.filter {
                body["filter"] = f.clone();
            }
            Ok(Prepared {
                qid: q.qid,
                tenant: q.tenant,
                filtered: q.filter.is_some(),
                body: Bytes::from(serde_json::to_vec(&body)?),
            })
        })
        .collect()
}

pub(super) fn read_truth(path: &Path) -> anyhow::Result<HashMap<u64, Vec<String>>> {
    #[derive(Deserialize)]
    struct Truth {
        qid: u64,
        doc_ids: Vec<String>,
    }
    Ok(read_jsonl::<Truth>(path)?
        .into_iter()
        .map(|t| (t.qid, t.doc_ids))
        .collect())
}

/// The workload's documents with every vector as base64 of little-endian
/// f32, written once beside `docs.jsonl` (and again when that is newer; in
/// the temp folder when the workload's is read-only), so the encoding's
/// ingest is timed without the conversion, as a producer that holds base64
/// vectors already would see it. `true` with a file in the temp folder,
/// which the caller removes when done.
pub(super) fn base64_docs(workload: &Path) -> anyhow::Result<(PathBuf, bool)> {
    use std::io::Write;
    let source = workload.join("docs.jsonl");
    let beside = workload.join("docs.base64.jsonl");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if matches!((modified(&beside), modified(&source)), (Some(t), Some(s)) if t >= s) {
        return Ok((beside, false));
    }
    let open = std::fs::File::open(&source)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", source.display()))?;
    let partial_of = |p: &Path| p.with_extension("jsonl.part");
    let (target, created, scratch) = match std::fs::File::create(partial_of(&beside)) {
        Ok(file) => (beside, file, false),
        Err(_) => {
            let name = format!("tenantvec-bench-{}.base64.jsonl", std::process::id());
            let target = std::env::temp_dir().join(name);
            let partial = partial_of(&target);
            let file = std::fs::File::create(&partial)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.display()))?;
            (target, file, true)
        }
    };
    let partial = partial_of(&target);
    let mut out = std::io::BufWriter::new(created);
    for (n, line) in std::io::BufReader::new(open).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let doc = base64_doc(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", source.display(), n + 1))?;
        writeln!(out, "{doc}")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, &target)?;
    Ok((target, scratch))
}

/// One document line with its `vector` array as base64; other fields as
/// they were.
pub(super) fn base64_doc(line: &str) -> anyhow::Result<String> {
    let mut doc: serde_json::Map<String, Value> = serde_json::from_str(line)?;
    if let Some(Value::Array(numbers)) = doc.get("vector") {
        let vector = numbers
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| anyhow::anyhow!("a vector holds something other than numbers"))?;
        let encoded = tenantvec::vector::to_base64(&vector);
        doc.insert("vector".into(), Value::String(encoded));
    }
    Ok(serde_json::to_string(&doc)?)
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_base64_workload_is_written_once_beside_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"tenant":"u1","doc_id":"d1","vector":[0.5,-1.25]}"#;
        std::fs::write(dir.path().join("docs.jsonl"), format!("{line}\n\n{line}\n")).unwrap();
        let (file, scratch) = super::base64_docs(dir.path()).unwrap();
        assert_eq!(file, dir.path().join("docs.base64.jsonl"));
        assert!(!scratch);
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.lines().count(), 2, "{written}");
        assert!(!dir.path().join("docs.base64.jsonl.part").exists());
        // Kept while the original is not newer.
        std::fs::write(&file, "kept\n").unwrap();
        assert_eq!(super::base64_docs(dir.path()).unwrap().0, file);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
    }

    #[test]
    fn a_documents_vector_becomes_base64_and_the_rest_stays() {
        let line = r#"{"tenant":"u1","doc_id":"d1","text":"walk","vector":[0.5,-1.25,3]}"#;
        let doc: serde_json::Value =
            serde_json::from_str(&super::base64_doc(line).unwrap()).unwrap();
        let vector = tenantvec::vector::from_base64(doc["vector"].as_str().unwrap()).unwrap();
        assert_eq!(vector, vec![0.5, -1.25, 3.0]);
        assert_eq!(doc["tenant"], "u1");
        assert_eq!(doc["text"], "walk");
        let bad = r#"{"doc_id":"d1","vector":[0.5,"x"]}"#;
        assert!(super::base64_doc(bad).is_err());
        let text_only = r#"{"doc_id":"d1","text":"walk"}"#;
        assert_eq!(super::base64_doc(text_only).unwrap(), text_only);
    }
}
