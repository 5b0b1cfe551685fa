//! The frontend's certificates, chosen by the name a TLS client asks for
//! (SNI): a certificate a gear's owner attached to an alias, else the
//! operator's certificate for `*.<domain>` (every gear's default name).
//!
//! An alias's certificate is checked when it is attached: the chain and key
//! parse, the key is the certificate's, the certificate covers the name and
//! is valid now. It is kept with its key in `<state>/tls/<host>.pem`,
//! readable by root only, and served from the next handshake on. The
//! operator's files are read at the start and again whenever they change
//! (checked every [`RELOAD_EVERY`]), so a renewed certificate needs no restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How often the operator's certificate files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The most bytes of a certificate chain with its key.
pub const MAX_PEM: usize = 256 * 1024;

/// A certificate chain with its key, checked.
#[derive(Debug, Clone)]
pub struct Pair {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// The leaf's issuer, for people.
    pub issuer: String,
}

/// Parses a PEM certificate chain and its private key and checks that they
/// belong together; the error says what is wrong and what to give.
pub fn parse_pair(chain_pem: &[u8], key_pem: &[u8]) -> Result<Pair, String> {
    if chain_pem.len() > MAX_PEM || key_pem.len() > MAX_PEM {
        return Err(format!(
            "the certificate or key is over {} KiB; give one chain and its key",
            MAX_PEM / 1024
        ));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate file is not PEM certificates ({e})"))?;
    if chain.is_empty() {
        return Err(
            "the certificate file holds no certificate; give the PEM chain, leaf first".into(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!("the key file holds no private key in PEM (PKCS#8, PKCS#1 or SEC1): {e}")
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key cannot sign for TLS: {e}"))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(
                "the private key is not the certificate's: give the key the certificate was \
                 issued for"
                    .into(),
            );
        }
        Err(e) => {
            return Err(format!(
                "the key and the certificate do not go together: {e}"
            ));
        }
    }
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("the leaf certificate cannot be read: {e}"))?;
    let validity = leaf.validity();
    Ok(Pair {
        key: Arc::new(certified),
        not_after: validity.not_after.timestamp(),
        issuer: leaf.issuer().to_string(),
    })
    .and_then(|pair| {
        let now = now_secs();
        if validity.not_before.timestamp() > now {
            return Err(format!(
                "the certificate is not valid before {}; wait, or give a current one",
                validity.not_before
            ));
        }
        if pair.not_after <= now {
            return Err(format!(
                "the certificate expired on {}; renew it",
                validity.not_after
            ));
        }
        Ok(pair)
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether the pair's leaf certificate is valid for `host`.
pub fn covers(pair: &Pair, host: &str) -> Result<(), String> {
    let leaf = pair
        .key
        .end_entity_cert()
        .map_err(|e| format!("no leaf certificate: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the leaf certificate cannot be read: {e:?}"))?;
    let name = ServerName::try_from(host)
        .map_err(|_| format!("{host} is not a host name"))?
        .to_owned();
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the certificate does not cover {host}; give one issued for it"))
}

/// The frontend's certificates, by the name the client asks for.
#[derive(Debug)]
pub struct Certs {
    /// `<state>/tls`.
    dir: PathBuf,
    /// The node's domain: the operator's certificate serves `*.<domain>`.
    domain: String,
    /// The operator's pair, and the files it came from with their times.
    operator: RwLock<Option<(Pair, Option<SystemTime>)>>,
    operator_files: Option<(PathBuf, PathBuf)>,
    /// Aliases' pairs.
    aliases: RwLock<HashMap<String, Pair>>,
}

fn modified(files: &(PathBuf, PathBuf)) -> Option<SystemTime> {
    let a = std::fs::metadata(&files.0)
        .and_then(|m| m.modified())
        .ok()?;
    let b = std::fs::metadata(&files.1)
        .and_then(|m| m.modified())
        .ok()?;
    Some(a.max(b))
}

impl Certs {
    /// Loads the operator's pair (when configured; an unusable one is an
    /// error, the node does not start half-served) and every alias's.
    pub fn open(
        state_dir: &Path,
        domain: &str,
        operator: Option<&(PathBuf, PathBuf)>,
    ) -> anyhow::Result<Certs> {
        let dir = state_dir.join("tls");
        std::fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let certs = Certs {
            dir,
            domain: domain.to_string(),
            operator: RwLock::new(None),
            operator_files: operator.cloned(),
            aliases: RwLock::new(HashMap::new()),
        };
        if let Some(files) = &certs.operator_files {
            certs.load_operator(files)?;
        }
        for entry in std::fs::read_dir(&certs.dir)?.flatten() {
            let path = entry.path();
            let Some(host) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            let text = std::fs::read(&path)?;
            match parse_pair(&text, &text) {
                Ok(pair) => {
                    certs.write_aliases().insert(host.to_string(), pair);
                }
                Err(e) => {
                    tracing::warn!(host, error = %e, "an alias's certificate is not served");
                }
            }
        }
        Ok(certs)
    }

    fn write_aliases(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Pair>> {
        self.aliases.write().unwrap_or_else(|e| e.into_inner())
    }

    fn load_operator(&self, files: &(PathBuf, PathBuf)) -> anyhow::Result<()> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        let pair = parse_pair(&read(&files.0)?, &read(&files.1)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", files.0.display()))?;
        let wildcard = format!("*.{}", self.domain);
        let probe = format!("gear.{}", self.domain);
        covers(&pair, &probe).map_err(|_| {
            anyhow::anyhow!(
                "{} does not cover {wildcard}, the gears' names: give a certificate for {wildcard}",
                files.0.display()
            )
        })?;
        *self.operator.write().unwrap_or_else(|e| e.into_inner()) = Some((pair, modified(files)));
        Ok(())
    }

    /// Reads the operator's files again if they changed since they were
    /// read; a renewed pair that does not load leaves the old one served.
    pub fn reload_operator(&self) {
        let Some(files) = &self.operator_files else {
            return;
        };
        let seen = self
            .operator
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|(_, t)| *t);
        let now = modified(files);
        if now.is_none() || now == seen {
            return;
        }
        match self.load_operator(files) {
            Ok(()) => {
                tracing::info!(certificate = %files.0.display(), "reloaded the operator's certificate")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the changed operator certificate is not served; the old one is")
            }
        }
    }

    /// Attach a checked pair to alias `host`, kept for the next start.
    pub fn set_alias(&self, host: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Pair, String> {
        let pair = parse_pair(chain_pem, key_pem)?;
        covers(&pair, host)?;
        let mut text = chain_pem.to_vec();
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(key_pem);
        let path = self.dir.join(format!("{host}.pem"));
        write_private(&path, &text).map_err(|e| format!("cannot keep the certificate: {e}"))?;
        self.write_aliases().insert(host.to_string(), pair.clone());
        Ok(pair)
    }

    /// Forget alias `host`'s pair (the alias was removed).
    pub fn remove_alias(&self, host: &str) {
        self.write_aliases().remove(host);
        let _ = std::fs::remove_file(self.dir.join(format!("{host}.pem")));
    }

    /// Whether the operator's certificate (for `*.<domain>`) is served.
    pub fn has_operator(&self) -> bool {
        self.operator
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// When each served certificate expires (seconds since the epoch), by
    /// the name it is served for: `*.<domain>` for the operator's, then
    /// each alias's, sorted by name.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let mut all: Vec<(String, i64)> = self
            .aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(host, pair)| (host.clone(), pair.not_after))
            .collect();
        all.sort();
        if let Some((pair, _)) = self
            .operator
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            all.insert(0, (format!("*.{}", self.domain), pair.not_after));
        }
        all
    }

    /// Alias `host`'s pair, if it has one.
    pub fn alias(&self, host: &str) -> Option<Pair> {
        self.aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    /// What serves `host`.
    fn pick(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(pair) = self
            .aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
        {
            return Some(pair.key.clone());
        }
        let label = host.strip_suffix(&format!(".{}", self.domain))?;
        if label.is_empty() || label.contains('.') {
            return None;
        }
        self.operator
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(pair, _)| pair.key.clone())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()?)
    }
}

/// Writes `bytes` to `path` readable by its owner (root) only, whole or not at all.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staged = path.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

/// TLS sessions the frontend remembers for resumption by session id.
const SESSION_CACHE: usize = 16 * 1024;

/// The TLS configuration of the frontend's `[https]` listener.
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    // ring offers no post-quantum key exchange (rustls marks its provider
    // deprecated for that); aws-lc-rs would bring cmake and a long C build
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    // HTTP/2 first, for the clients that speak it; HTTP/1.1 for the others
    // and for websockets
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // resumed sessions skip the certificate's signature: tickets (TLS 1.2
    // and 1.3, keys rotated by rustls) and a cache for clients without
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair for `names`, valid from `from` to `until` (years).
    fn pair(names: &[&str], from: i32, until: i32) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_pair_is_checked_for_key_name_and_dates() {
        let (cert, key) = pair(&["www.example.org"], 2020, 2099);
        let p = parse_pair(cert.as_bytes(), key.as_bytes()).expect("good");
        covers(&p, "www.example.org").expect("covered");
        let e = covers(&p, "shop.example.org").expect_err("not covered");
        assert!(e.contains("does not cover shop.example.org"), "{e}");
        let (_, other_key) = pair(&["www.example.org"], 2020, 2099);
        let e = parse_pair(cert.as_bytes(), other_key.as_bytes()).expect_err("mismatch");
        assert!(e.contains("not the certificate's"), "{e}");
        let (old, old_key) = pair(&["www.example.org"], 2001, 2002);
        let e = parse_pair(old.as_bytes(), old_key.as_bytes()).expect_err("expired");
        assert!(e.contains("expired"), "{e}");
        let (early, early_key) = pair(&["www.example.org"], 2090, 2099);
        let e = parse_pair(early.as_bytes(), early_key.as_bytes()).expect_err("not yet");
        assert!(e.contains("not valid before"), "{e}");
        let e = parse_pair(b"junk", key.as_bytes()).expect_err("no certificate");
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn sni_picks_the_alias_then_the_operator_for_one_label_under_the_domain() {
        let dir = tempfile::tempdir().expect("dir");
        let (wild, wild_key) = pair(&["*.gears.test"], 2020, 2099);
        std::fs::write(dir.path().join("w.pem"), &wild).expect("write");
        std::fs::write(dir.path().join("w.key"), &wild_key).expect("write");
        let files = (dir.path().join("w.pem"), dir.path().join("w.key"));
        let certs = Certs::open(dir.path(), "gears.test", Some(&files)).expect("open");
        let (alias, alias_key) = pair(&["www.example.org"], 2020, 2099);
        certs
            .set_alias("www.example.org", alias.as_bytes(), alias_key.as_bytes())
            .expect("attached");
        // each served name's expiry, the operator's first
        let expiries = certs.expiries();
        let names: Vec<&str> = expiries.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(names, ["*.gears.test", "www.example.org"]);
        assert_eq!(
            expiries[1].1,
            certs.alias("www.example.org").expect("alias").not_after
        );
        assert!(expiries.iter().all(|(_, t)| *t > now_secs()));
        let operator = certs.pick("web-ns.gears.test").expect("operator's");
        let own = certs.pick("WWW.Example.org.").expect("alias's");
        assert!(!Arc::ptr_eq(&operator, &own));
        assert!(
            certs.pick("a.b.gears.test").is_none(),
            "two labels: not the wildcard's"
        );
        assert!(certs.pick("gears.test").is_none());
        assert!(certs.pick("other.example.org").is_none());
        // kept for the next start, readable by root only
        let again = Certs::open(dir.path(), "gears.test", Some(&files)).expect("open");
        assert!(again.pick("www.example.org").is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/www.example.org.pem"))
            .expect("kept")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        again.remove_alias("www.example.org");
        assert!(again.pick("www.example.org").is_none());
        // an operator certificate that does not cover the gears' names is refused
        let (narrow, narrow_key) = pair(&["www.gears.test"], 2020, 2099);
        std::fs::write(dir.path().join("n.pem"), &narrow).expect("write");
        std::fs::write(dir.path().join("n.key"), &narrow_key).expect("write");
        let files = (dir.path().join("n.pem"), dir.path().join("n.key"));
        let e = Certs::open(dir.path(), "gears.test", Some(&files)).expect_err("narrow");
        assert!(e.to_string().contains("does not cover *.gears.test"), "{e}");
    }
}
