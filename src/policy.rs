//! Per-tenant policy: default `top_k`, document quota and request rate.
//!
//! Owns a tenant's settings ([`TenantSettings`]: kept in its registry record,
//! or in `<data>/<tenant>/config/tenant.json`, the seed application's
//! per-user config file, where there is no registry or before a tenant's
//! record is made from it), what they resolve to over the global defaults,
//! and the token bucket that enforces a request rate. A tenant actor holds one of each while active. It
//! must never follow a symlink out of the tenant's folder, and never let an
//! unreadable policy file lift a limit: a broken file fails the tenant's
//! requests instead (fail closed), with a message that names the file.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::protocol::ServiceError;
use crate::tenant::{TenantId, TenantPaths};

/// The global defaults (`[tenants]` in the settings); 0 means no limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDefaults {
    /// Most documents a tenant may hold.
    pub max_documents: u64,
    /// Most requests per second a tenant may send (a token bucket holding
    /// one second's worth).
    pub max_rps: f64,
    /// Keep tenants as records in the registry (a JetStream KV bucket);
    /// without it, as folders with `tenant.json`.
    pub registry: bool,
    /// A tenant's first write makes its record; off, a tenant without one
    /// is refused (`unknown_tenant`) until an operator creates it.
    pub auto_create: bool,
}

/// A tenant's own settings: each one set overrides the default; absent
/// ones keep it. The shape of `tenant.json` and of a registry record's
/// `settings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub max_documents: Option<u64>,
    #[serde(default)]
    pub max_rps: Option<f64>,
}

impl TenantSettings {
    /// The first setting out of its range, named; `max_top_k` bounds `top_k`.
    pub fn check(&self, max_top_k: usize) -> Result<(), String> {
        if self.top_k.is_some_and(|k| k == 0 || k > max_top_k) {
            return Err(format!("top_k must be 1..={max_top_k}"));
        }
        if self.max_rps.is_some_and(|r| !r.is_finite() || r < 0.0) {
            return Err("max_rps must be a number >= 0 (0: no limit)".into());
        }
        Ok(())
    }

    /// Apply `changes` (a JSON object of settings): a setting given a value
    /// takes it, one given `null` goes back to the default. Unknown keys and
    /// values of the wrong type are refused, and nothing is changed then.
    pub fn apply(
        &mut self,
        changes: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        let mut next = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let object = next
            .as_object_mut()
            .ok_or_else(|| "settings are not an object".to_owned())?;
        for (key, value) in changes {
            if !object.contains_key(key) {
                return Err(format!(
                    "unknown setting {key:?}: the settings are top_k, max_documents and max_rps"
                ));
            }
            object.insert(key.clone(), value.clone());
        }
        *self = serde_json::from_value(next).map_err(|e| format!("invalid settings: {e}"))?;
        Ok(())
    }

    /// The tenant's `tenant.json`, `None` when it has none. Refuses a
    /// symlink at any step below the data root, and a file that is not
    /// valid settings.
    pub fn read_file(paths: &TenantPaths, tenant: &TenantId) -> Result<Option<Self>, ServiceError> {
        let file = TenantPolicy::file(paths, tenant);
        let Some(text) = read_plain_file(paths, tenant, &file)? else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            ServiceError::internal(format!(
                "tenant {tenant}: {} is invalid: {e}",
                file.display()
            ))
        })
    }
}

/// What applies to one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    /// The tenant's default `top_k`, if it has its own.
    pub top_k: Option<usize>,
    pub max_documents: Option<u64>,
    pub max_rps: Option<f64>,
}

impl TenantPolicy {
    /// The tenant's policy: `tenant.json` over `defaults`. A missing file is
    /// the defaults; an unreadable, malformed or out-of-range one is an error.
    pub fn load(
        paths: &TenantPaths,
        tenant: &TenantId,
        defaults: &TenantDefaults,
        max_top_k: usize,
    ) -> Result<Self, ServiceError> {
        let settings = TenantSettings::read_file(paths, tenant)?.unwrap_or_default();
        let file = Self::file(paths, tenant);
        Self::resolve(&settings, defaults, max_top_k).map_err(|e| {
            ServiceError::internal(format!("tenant {tenant}: {}: {e}", file.display()))
        })
    }

    /// What `settings` come to over `defaults`; an out-of-range setting is
    /// an error (fail closed: a broken setting never lifts a limit).
    pub fn resolve(
        settings: &TenantSettings,
        defaults: &TenantDefaults,
        max_top_k: usize,
    ) -> Result<Self, String> {
        settings.check(max_top_k)?;
        let parsed = settings;
        let limit_u = |v: u64| (v > 0).then_some(v);
        let limit_f = |v: f64| (v > 0.0).then_some(v);
        Ok(Self {
            top_k: parsed.top_k,
            max_documents: limit_u(parsed.max_documents.unwrap_or(defaults.max_documents)),
            max_rps: limit_f(parsed.max_rps.unwrap_or(defaults.max_rps)),
        })
    }

    /// `<data>/<tenant>/config/tenant.json`
    pub fn file(paths: &TenantPaths, tenant: &TenantId) -> PathBuf {
        paths.tenant_dir(tenant).join("config").join("tenant.json")
    }
}

/// The file's text, `None` when it does not exist. Refuses a symlink at any
/// step below the data root, so the file is always inside the tenant folder.
fn read_plain_file(
    paths: &TenantPaths,
    tenant: &TenantId,
    file: &std::path::Path,
) -> Result<Option<String>, ServiceError> {
    let refuse = |e: std::io::Error| {
        ServiceError::internal(format!(
            "tenant {tenant}: cannot read {}: {e}",
            file.display()
        ))
    };
    paths.check_tenant_dir(tenant).map_err(refuse)?;
    for step in [file.parent(), Some(file)].into_iter().flatten() {
        match std::fs::symlink_metadata(step) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(std::io::Error::other("it is a symlink")))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refuse(e)),
        }
    }
    std::fs::read_to_string(file).map(Some).map_err(refuse)
}

/// A token bucket: `rate` tokens a second, holding at most one second's worth.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How long until the bucket holds a token again (as of the last try).
    pub fn wait(&self) -> std::time::Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        std::time::Duration::from_secs_f64(missing / self.rate.max(f64::MIN_POSITIVE))
    }

    /// Take one token if there is one.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn setup(json: Option<&str>) -> (tempfile::TempDir, TenantPaths, TenantId) {
        let dir = tempfile::tempdir().unwrap();
        let paths = TenantPaths::new(dir.path());
        let t = TenantId::parse("t").unwrap();
        if let Some(json) = json {
            let file = TenantPolicy::file(&paths, &t);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, json).unwrap();
        }
        (dir, paths, t)
    }

    const DEFAULTS: TenantDefaults = TenantDefaults {
        max_documents: 100,
        max_rps: 0.0,
        registry: true,
        auto_create: true,
    };

    #[test]
    fn changes_set_and_clear_settings_or_change_nothing() {
        let mut s = TenantSettings::default();
        let changes = |v: serde_json::Value| v.as_object().unwrap().clone();
        s.apply(&changes(serde_json::json!({"top_k": 3, "max_rps": 2.5})))
            .unwrap();
        assert_eq!(
            (s.top_k, s.max_documents, s.max_rps),
            (Some(3), None, Some(2.5))
        );
        s.apply(&changes(
            serde_json::json!({"top_k": null, "max_documents": 10}),
        ))
        .unwrap();
        assert_eq!(
            (s.top_k, s.max_documents, s.max_rps),
            (None, Some(10), Some(2.5))
        );
        let before = s.clone();
        assert!(s.apply(&changes(serde_json::json!({"quota": 5}))).is_err());
        assert!(s
            .apply(&changes(serde_json::json!({"top_k": "many"})))
            .is_err());
        assert_eq!(s, before);
        assert!(TenantSettings {
            top_k: Some(0),
            ..Default::default()
        }
        .check(10)
        .is_err());
        assert!(TenantSettings {
            max_rps: Some(-1.0),
            ..Default::default()
        }
        .check(10)
        .is_err());
    }

    #[test]
    fn the_file_overrides_the_defaults() {
        let (_d, paths, t) = setup(None);
        let p = TenantPolicy::load(&paths, &t, &DEFAULTS, 1000).unwrap();
        assert_eq!(
            (p.top_k, p.max_documents, p.max_rps),
            (None, Some(100), None)
        );
        let (_d, paths, t) = setup(Some(r#"{"top_k": 3, "max_documents": 0, "max_rps": 5}"#));
        let p = TenantPolicy::load(&paths, &t, &DEFAULTS, 1000).unwrap();
        assert_eq!(
            (p.top_k, p.max_documents, p.max_rps),
            (Some(3), None, Some(5.0))
        );
    }

    #[test]
    fn a_broken_file_fails_closed() {
        for bad in [
            "{",
            r#"{"top_k": 0}"#,
            r#"{"max_rps": -1}"#,
            r#"{"quota": 5}"#,
        ] {
            let (_d, paths, t) = setup(Some(bad));
            assert!(
                TenantPolicy::load(&paths, &t, &DEFAULTS, 1000).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = RateLimiter::new(2.0, start);
        assert!(b.try_acquire(start) && b.try_acquire(start));
        assert!(!b.try_acquire(start));
        assert!(b.try_acquire(start + Duration::from_millis(500)));
        assert!(!b.try_acquire(start + Duration::from_millis(500)));
    }
}
