//! Regions: where each tenant lives. A region is a NATS cluster with a
//! JetStream domain of its own, its workers and their data; regions are
//! joined so that core NATS subjects cross between them, and every tenant
//! has one home region (its record's `home_region`), which alone holds its
//! documents, vectors, ingest messages, dead letters, backups and key.
//!
//! Owns the answer to "where is this tenant's home?": a decision drawn from
//! the region's directory ([`directory`]), a copy of every region's
//! registry that JetStream itself keeps up to date (each region's registry
//! bucket sourced, across domains, into this region's directory bucket).
//! It must never be asked for a tenant's settings (an actor reads its own
//! record), never make a request wait on JetStream (the directory is read
//! into memory before the worker serves, then followed), and never let a
//! region that is down look like a tenant that does not exist: its
//! tenants stay in the directory, homed there.

pub mod directory;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use directory::Directory;

use crate::config::Settings;
use crate::protocol::ServiceError;

/// How often a worker looks at its directory's sources (a region whose
/// registry appeared, or a source JetStream lost).
const LINK_EVERY: Duration = Duration::from_secs(5);
/// How long a starting worker waits for its region's directory to be read.
const DIRECTORY_READ: Duration = Duration::from_secs(30);

/// This worker's regions, from `settings` (`worker.region` set): its
/// JetStream domain checked to be its region's (the region's streams and
/// buckets are made there, never in another region's), and the directory
/// read whole before this returns, then followed until `shutdown`.
pub async fn open(
    client: &async_nats::Client,
    settings: &Settings,
    own: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<Regions> {
    let js = async_nats::jetstream::new(client.clone());
    let account = js
        .query_account()
        .await
        .map_err(|e| anyhow::anyhow!("regions need JetStream (nats-server -js): {e}"))?;
    check_domain(own, account.domain.as_deref()).map_err(anyhow::Error::msg)?;
    let all = settings.worker.all_regions();
    let directory = Arc::new(
        Directory::open(
            &js,
            &settings.nats.prefix,
            own,
            &all,
            settings.nats.replicas,
        )
        .await?,
    );
    let following = directory.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { following.follow(stop).await });
    let linking = directory.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LINK_EVERY) => {}
            }
            if let Err(e) = linking.link(&js).await {
                tracing::debug!(error = %e, "cannot look at the region directory's sources");
            }
        }
    });
    if !directory.wait_read(DIRECTORY_READ).await {
        anyhow::bail!(
            "the region directory {} was not read within {DIRECTORY_READ:?}; is JetStream \
             of region {own} healthy?",
            directory.bucket()
        );
    }
    tracing::info!(region = own, regions = ?all, "serving in region {own}");
    Ok(Regions::new(own.to_owned(), all, directory))
}

/// A worker of region `own` may use a JetStream of domain `domain` only
/// when they are the same: with any other, the region's data would be
/// stored in another region (or in one domain spanning two).
pub fn check_domain(own: &str, domain: Option<&str>) -> Result<(), String> {
    match domain {
        Some(d) if d == own => Ok(()),
        Some(d) => Err(format!(
            "worker.region is {own:?}, but the NATS server's JetStream domain is {d:?}: a region's \
             workers connect to its own servers, whose JetStream domain is the region's name \
             (docs/regions.md)"
        )),
        None => Err(format!(
            "worker.region is {own:?}, but the NATS server's JetStream has no domain: give the \
             region's servers `jetstream {{ domain: {own} }}` (docs/regions.md)"
        )),
    }
}

/// Where a tenant's requests are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// Here: its record is in this region, or it has none anywhere (a
    /// tenant to be created, whose home is then this region).
    Local,
    /// In another region.
    Remote(String),
}

/// This worker's region and the directory of every region's tenants.
#[derive(Clone)]
pub struct Regions {
    own: String,
    all: Vec<String>,
    directory: Arc<Directory>,
}

impl Regions {
    pub fn new(own: String, all: Vec<String>, directory: Arc<Directory>) -> Self {
        Self {
            own,
            all,
            directory,
        }
    }

    /// This worker's region.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// Every region of the deployment, this one first.
    pub fn all(&self) -> &[String] {
        &self.all
    }

    /// `region` if it is one of the deployment's, else the refusal naming
    /// them (`what`: the field that named it).
    pub fn known(&self, what: &str, region: &str) -> Result<(), ServiceError> {
        match self.all.iter().any(|r| r == region) {
            true => Ok(()),
            false => Err(ServiceError::bad_request(format!(
                "{what} {region:?} is not one of this deployment's regions ({}: worker.regions)",
                self.all.join(", ")
            ))),
        }
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Where `tenant`'s home is, as this region's directory knows it.
    pub fn home_of(&self, tenant: &str) -> Home {
        self.directory
            .with_claims(tenant, |claims| resolve(&self.own, claims))
    }

    /// The region that took `tenant` over from this one (a failover): this
    /// region holds it as its home, but another one does with a higher
    /// epoch. `None` when this region's copy is the home, or it has none.
    pub fn superseded_by(&self, tenant: &str) -> Option<String> {
        self.directory.with_claims(tenant, |claims| {
            let mine = claims.get(&self.own)?;
            if mine.arriving || mine.home.as_deref().is_some_and(|h| h != self.own) {
                return None;
            }
            match resolve(&self.own, claims) {
                Home::Remote(r) => Some(r),
                Home::Local => None,
            }
        })
    }

    /// Whether `tenant` is being moved between regions (a record of it is
    /// `moving` or `arriving`): its writes wait until the move ends.
    pub fn in_transit(&self, tenant: &str) -> bool {
        self.directory
            .with_claims(tenant, |claims| claims.values().any(|c| c.in_transit))
    }
}

/// What a region's record of a tenant says of its home.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    /// The `home_region` it names (`None`: written before regions).
    pub home: Option<String>,
    /// It is `arriving`: a move is copying the tenant there, which is not
    /// its home yet.
    pub arriving: bool,
    /// It is `moving` or `arriving`.
    pub in_transit: bool,
    /// The record's `home_epoch` (raised by a failover).
    pub epoch: u64,
}

/// The home of a tenant from the records the regions hold of it
/// (`claims`: the region that holds a record, and what it says).
///
/// A record that names its own region (or none) is a home, unless it is
/// `arriving` (a move's copy, not the home yet). With none, the tenant is
/// new: local. With two, the higher `home_epoch` wins (a failover's copy
/// over the old home that returned); of equal epochs (two first writes in
/// two regions within the directory's lag) the first region by name, in
/// every region alike, so that no two regions both serve the tenant. A
/// record that names another region (a tenant moved away, its old record
/// not yet erased) points there.
pub fn resolve(own: &str, claims: &BTreeMap<String, Claim>) -> Home {
    let home_claim = claims
        .iter()
        .filter(|(held, c)| !c.arriving && c.home.as_deref().is_none_or(|n| n == held.as_str()))
        // The highest epoch; the first by name among equals (max_by_key
        // keeps the last of equals, so the order is reversed).
        .rev()
        .max_by_key(|(_, c)| c.epoch)
        .map(|(held, _)| held.as_str());
    let pointed = claims.values().find_map(|c| c.home.as_deref());
    match home_claim.or(pointed) {
        None => Home::Local,
        Some(r) if r == own => Home::Local,
        Some(r) => Home::Remote(r.to_owned()),
    }
}

/// `<p>._region.<region>`: the subjects on which a region's workers take
/// requests forwarded to them from other regions (the original subject
/// follows).
pub fn forward_prefix(prefix: &str, region: &str) -> String {
    format!("{prefix}._region.{region}")
}

/// The original subject of a request forwarded to `region`, `None` when
/// `subject` is not one.
pub fn original_subject<'a>(prefix: &str, region: &str, subject: &'a str) -> Option<&'a str> {
    let head = forward_prefix(prefix, region);
    subject
        .strip_prefix(head.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|rest| rest.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(items: &[(&str, Option<&str>)]) -> BTreeMap<String, Claim> {
        items
            .iter()
            .map(|(held, named)| {
                let claim = Claim {
                    home: named.map(str::to_owned),
                    ..Claim::default()
                };
                ((*held).to_owned(), claim)
            })
            .collect()
    }

    #[test]
    fn a_tenant_no_region_holds_is_new_here() {
        assert_eq!(resolve("eu", &claims(&[])), Home::Local);
    }

    #[test]
    fn a_record_names_the_home() {
        assert_eq!(resolve("eu", &claims(&[("eu", Some("eu"))])), Home::Local);
        assert_eq!(
            resolve("eu", &claims(&[("us", Some("us"))])),
            Home::Remote("us".into())
        );
        // Written before regions: home where it is held.
        assert_eq!(
            resolve("eu", &claims(&[("us", None)])),
            Home::Remote("us".into())
        );
    }

    #[test]
    fn a_moved_tenant_is_found_through_its_old_record() {
        // The old home's record points at the new one, not yet seen here.
        assert_eq!(
            resolve("eu", &claims(&[("eu", Some("us"))])),
            Home::Remote("us".into())
        );
        // The new one seen too: it is the home.
        assert_eq!(
            resolve("eu", &claims(&[("eu", Some("us")), ("us", Some("us"))])),
            Home::Remote("us".into())
        );
        assert_eq!(
            resolve("us", &claims(&[("eu", Some("us")), ("us", Some("us"))])),
            Home::Local
        );
    }

    #[test]
    fn an_arriving_copy_is_not_a_home_until_the_old_one_points_to_it() {
        let mut during = claims(&[("eu", Some("eu")), ("us", Some("us"))]);
        during.get_mut("us").unwrap().arriving = true;
        assert_eq!(resolve("us", &during), Home::Remote("eu".into()));
        // The flip: the old record points at the arriving one.
        during.get_mut("eu").unwrap().home = Some("us".into());
        assert_eq!(resolve("eu", &during), Home::Remote("us".into()));
        assert_eq!(resolve("us", &during), Home::Local);
    }

    #[test]
    fn a_failed_over_copy_wins_over_the_old_home() {
        let mut both = claims(&[("eu", Some("eu")), ("us", Some("us"))]);
        both.get_mut("us").unwrap().epoch = 1;
        assert_eq!(resolve("eu", &both), Home::Remote("us".into()));
        assert_eq!(resolve("us", &both), Home::Local);
    }

    #[test]
    fn two_homes_resolve_alike_in_every_region() {
        let both = claims(&[("us", Some("us")), ("eu", Some("eu"))]);
        assert_eq!(resolve("eu", &both), Home::Local);
        assert_eq!(resolve("us", &both), Home::Remote("eu".into()));
    }

    #[test]
    fn a_region_uses_its_own_domain_only() {
        assert!(check_domain("eu", Some("eu")).is_ok());
        assert!(check_domain("eu", Some("us"))
            .unwrap_err()
            .contains("\"us\""));
        assert!(check_domain("eu", None).unwrap_err().contains("domain: eu"));
    }

    #[test]
    fn forwarded_subjects_carry_the_original() {
        let head = forward_prefix("tenantvec", "us");
        assert_eq!(head, "tenantvec._region.us");
        let s = format!("{head}.tenantvec.search.alice");
        assert_eq!(
            original_subject("tenantvec", "us", &s),
            Some("tenantvec.search.alice")
        );
        assert_eq!(original_subject("tenantvec", "eu", &s), None);
        assert_eq!(
            original_subject("tenantvec", "us", "tenantvec._region.us.other.search.a"),
            None
        );
    }
}
