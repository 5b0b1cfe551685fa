//! Certificates from an ACME server (RFC 8555) for aliases that ask for one
//! (`gear alias add NAME HOST --acme`), through `[acme]`.
//!
//! The node keeps one account (its key in `<state>/tls/acme-account.json`,
//! root only) and a list of the names it manages (`acme.json`, with each
//! one's state). A task orders a certificate for every managed name that has
//! none, or one with less than `acme.renew-before` left; the HTTP-01
//! challenge is answered by the frontend itself, on the plain listener,
//! before any routing (`/.well-known/acme-challenge/<token>`). A failure is
//! kept with its reason and tried again later, the wait doubling from a
//! minute up to six hours; `gear alias list` shows where each name stands.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gearhost_node_config::acme::AcmeConfig;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use gearhost_sys::lock::lock;

/// The shortest wait before a failed name is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest.
const LAST_RETRY: Duration = Duration::from_secs(6 * 3600);
/// How often the task looks for names that are due, when nothing wakes it.
const LOOK_EVERY: Duration = Duration::from_secs(600);
/// The least time between two orders for one name that succeeded (a
/// certificate whose whole life is shorter than `renew-before` would
/// otherwise be ordered again and again); asking again (`--acme`) skips it.
const LEAST_BETWEEN: Duration = Duration::from_secs(3600);

/// Where a managed name stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Managed {
    /// Failures in a row.
    pub failures: u32,
    /// The last failure's reason, until a certificate comes.
    pub error: Option<String>,
    /// When to try next (seconds since the epoch; 0: now).
    pub next_try: u64,
    /// When its current certificate expires (seconds since the epoch).
    pub not_after: Option<i64>,
}

/// The node's ACME client: its account, the names it manages, and the
/// challenges it is answering.
pub struct Acme {
    config: AcmeConfig,
    dir: PathBuf,
    account: tokio::sync::Mutex<Option<Account>>,
    managed: Mutex<BTreeMap<String, Managed>>,
    /// HTTP-01 tokens and their key authorizations.
    challenges: RwLock<HashMap<String, String>>,
    /// Wakes the task when a name is added.
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.config.directory)
            .field("managed", &lock(&self.managed).len())
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Acme {
    /// The client for `config`, its managed names read from `<state>/tls`.
    pub fn open(config: AcmeConfig, state_dir: &Path) -> anyhow::Result<Acme> {
        let dir = state_dir.join("tls");
        std::fs::create_dir_all(&dir)?;
        let managed = match std::fs::read(dir.join("acme.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}/acme.json is damaged: {e}", dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Acme {
            config,
            dir,
            account: tokio::sync::Mutex::new(None),
            managed: Mutex::new(managed),
            challenges: RwLock::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn save(&self, managed: &BTreeMap<String, Managed>) {
        let text = serde_json::to_vec_pretty(managed).unwrap_or_default();
        if let Err(e) = crate::state::write_atomic(&self.dir.join("acme.json"), &text) {
            tracing::warn!(error = %e, "cannot keep the ACME names");
        }
    }

    /// Manage `host` from now on: a certificate is ordered at once.
    pub fn add(&self, host: &str) {
        let mut managed = lock(&self.managed);
        managed.entry(host.to_string()).or_default().next_try = 0;
        self.save(&managed);
        drop(managed);
        self.wake.notify_one();
    }

    /// Stop managing `host` (its alias went).
    pub fn forget(&self, host: &str) {
        let mut managed = lock(&self.managed);
        if managed.remove(host).is_some() {
            self.save(&managed);
        }
    }

    /// Where `host` stands, if it is managed.
    pub fn status(&self, host: &str) -> Option<Managed> {
        lock(&self.managed).get(host).cloned()
    }

    /// The key authorization for HTTP-01 token `token`, while it is being answered.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// The account: loaded from its file, or made on the server and kept.
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let builder = || match &self.config.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        let path = self.dir.join("acme-account.json");
        let account = match std::fs::read(&path) {
            Ok(bytes) => {
                let credentials: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
                builder()
                    .map_err(|e| e.to_string())?
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| format!("the ACME account cannot be used: {e}"))?
            }
            Err(_) => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()
                    .map_err(|e| e.to_string())?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("the ACME server refused a new account: {e}"))?;
                let text = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
                crate::certs::write_private(&path, &text)
                    .map_err(|e| format!("cannot keep the account: {e}"))?;
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Order a certificate for `host`: its chain (PEM) and private key (PEM).
    async fn order(&self, host: &str) -> Result<(String, String), String> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("the ACME server refused the order: {e}"))?;
        let mut tokens = Vec::new();
        let answered = async {
            let mut authorizations = order.authorizations();
            while let Some(result) = authorizations.next().await {
                let mut authz = result.map_err(|e| e.to_string())?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("the authorization for {host} is {other:?}")),
                }
                let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                    format!("the ACME server offers no HTTP-01 challenge for {host}")
                })?;
                self.challenges
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        challenge.token.clone(),
                        challenge.key_authorization().as_str().to_string(),
                    );
                tokens.push(challenge.token.clone());
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("the challenge could not be started: {e}"))?;
            }
            Ok::<(), String>(())
        }
        .await;
        let result = match answered {
            Ok(()) => self.finish(&mut order, host).await,
            Err(e) => Err(e),
        };
        let mut challenges = self.challenges.write().unwrap_or_else(|e| e.into_inner());
        for token in tokens {
            challenges.remove(&token);
        }
        result
    }

    /// Wait for the order's validation, then finalize it and fetch the chain.
    async fn finish(
        &self,
        order: &mut instant_acme::Order,
        host: &str,
    ) -> Result<(String, String), String> {
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("validation of {host} failed: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "validation of {host} ended {status:?}: check that {host} reaches this node's \
                 frontend on port 80"
            ));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("the order could not be finalized: {e}"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("the certificate did not come: {e}"))?;
        Ok((chain, key))
    }
}

/// The longest one order may take, every request to the ACME server and the
/// wait for its validation included.
const ORDER_TIME: std::time::Duration = std::time::Duration::from_secs(300);

impl crate::node::Node {
    /// The ACME task: orders certificates for the managed names that are
    /// due, until the node stops.
    pub async fn run_acme(self: Arc<Self>) {
        let Some(acme) = self.acme.clone() else {
            return;
        };
        loop {
            let due: Vec<String> = {
                let renew = acme.config.renew_before.as_secs() as i64;
                let now = now();
                lock(&acme.managed)
                    .iter()
                    .filter(|(host, m)| {
                        let needed = match self.certs.alias(host) {
                            None => true,
                            Some(pair) => pair.not_after - renew <= now as i64,
                        };
                        needed && m.next_try <= now
                    })
                    .map(|(host, _)| host.clone())
                    .collect()
            };
            for host in due {
                // a server that stalls a request fails the order, which backs off like any failure
                let ordered = tokio::time::timeout(ORDER_TIME, acme.order(&host))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "the ACME server did not complete the order within {} s; it is tried again later",
                            ORDER_TIME.as_secs()
                        ))
                    });
                let outcome = ordered.and_then(|(chain, key)| {
                    self.certs
                        .set_alias(&host, chain.as_bytes(), key.as_bytes())
                        .map_err(|e| format!("the certificate that came is not usable: {e}"))
                });
                let mut managed = lock(&acme.managed);
                let Some(m) = managed.get_mut(&host) else {
                    continue;
                };
                match outcome {
                    Ok(pair) => {
                        tracing::info!(host, "an ACME certificate is served");
                        let renew = acme.config.renew_before.as_secs() as i64;
                        if pair.not_after - renew <= now() as i64 {
                            tracing::warn!(
                                host,
                                "the new certificate lives less than acme.renew-before: it is \
                                 renewed again in an hour; lower renew-before"
                            );
                        }
                        *m = Managed {
                            not_after: Some(pair.not_after),
                            next_try: now() + LEAST_BETWEEN.as_secs(),
                            ..Managed::default()
                        };
                    }
                    Err(e) => {
                        m.failures += 1;
                        let wait = FIRST_RETRY
                            .saturating_mul(1 << m.failures.saturating_sub(1).min(16))
                            .min(LAST_RETRY);
                        m.next_try = now() + wait.as_secs();
                        tracing::warn!(host, error = %e, retry_in = ?wait, "no ACME certificate");
                        m.error = Some(e);
                    }
                }
                acme.save(&managed);
                drop(managed);
                // the gear the name leads to may redirect it to HTTPS now
                match self.frontend.lookup(&host) {
                    Some(target) => match &*target.gear {
                        crate::remote::Routed::Local(gear) => self.update_routes(gear),
                        crate::remote::Routed::Remote(_) => {}
                    },
                    None => self.rebuild_routes(),
                }
            }
            // until the next name is due, a name is added, or a while passes
            let next = {
                let now = now();
                lock(&acme.managed)
                    .values()
                    .map(|m| m.next_try.saturating_sub(now))
                    .filter(|w| *w > 0)
                    .min()
                    .map_or(LOOK_EVERY, |w| Duration::from_secs(w).min(LOOK_EVERY))
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = acme.wake.notified() => {}
            }
        }
    }
}
