//! Users' ssh public keys: parsed and checked when added (`gear keys add`),
//! kept in `<state>/ssh/keys.json`, and looked up by the ssh endpoint to
//! learn which user a key that logs in belongs to.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::api::reply::KeyInfo;
use crate::api::{ApiError, ErrorKind};
use gearhost_sys::lock::lock;

/// Most keys one user may have.
pub const MAX_KEYS_PER_USER: usize = 64;
/// Most bytes of one key line (an RSA key of 16,384 bits is about 2.8 KiB).
const MAX_LINE: usize = 16 * 1024;
/// Most characters of a key's comment.
const MAX_COMMENT: usize = 256;
/// The smallest RSA key accepted, in bits.
const MIN_RSA_BITS: u32 = 2048;

/// A key as parsed from an `authorized_keys` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Its type.
    pub kind: String,
    /// The key blob, base64 as in the line.
    pub base64: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// Size in bits.
    pub bits: u32,
    /// The line's comment.
    pub comment: String,
}

/// Reads SSH wire-format fields (RFC 4251: `string`, `mpint`).
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let value = self.0.get(4..4 + len)?;
        self.0 = &self.0[4 + len..];
        Some(value)
    }
}

/// Significant bits of an unsigned big-endian number (an `mpint`'s bytes).
fn bits_of(mpint: &[u8]) -> u32 {
    let digits: Vec<u8> = mpint.iter().copied().skip_while(|b| *b == 0).collect();
    match digits.first() {
        None => 0,
        Some(first) => (digits.len() as u32 - 1) * 8 + (8 - first.leading_zeros()),
    }
}

/// Parses and checks one public key line: `TYPE BASE64 [COMMENT]`. The
/// error says what is wrong with it and what to give instead.
pub fn parse(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    if line.len() > MAX_LINE {
        return Err(format!(
            "the key line is longer than {MAX_LINE} bytes; give one public key (the .pub file)"
        ));
    }
    if line.is_empty() {
        return Err(
            "no key was given; pass the public key file, e.g. ~/.ssh/id_ed25519.pub".into(),
        );
    }
    if line.contains("PRIVATE KEY") {
        return Err(
            "this is a private key: never share it; give the public one (the .pub file beside it)"
                .into(),
        );
    }
    if line.lines().count() > 1 {
        return Err("give one key line, not several; add each key on its own".into());
    }
    let mut fields = line.split_whitespace();
    let kind = fields.next().unwrap_or_default().to_string();
    let known = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if !known.contains(&kind.as_str()) {
        let hint = if kind.contains('=') || kind.contains(',') {
            "a key line with options (command=..., from=...) is refused: give the bare key"
        } else {
            "give an OpenSSH public key line such as `ssh-ed25519 AAAA... you@laptop`"
        };
        return Err(format!(
            "{kind:?} is not a key type the node accepts; {hint}"
        ));
    }
    let base64 = fields
        .next()
        .ok_or_else(|| format!("the {kind} key has no key data after its type"))?
        .to_string();
    let comment: String = fields.collect::<Vec<_>>().join(" ");
    if comment.chars().count() > MAX_COMMENT || comment.chars().any(char::is_control) {
        return Err(format!(
            "the key's comment is over {MAX_COMMENT} characters or has control characters; shorten it"
        ));
    }
    let blob = gearhost_sys::base64::decode(&base64)
        .ok_or_else(|| "the key data is not base64; copy the whole .pub line".to_string())?;
    let mut wire = Wire(&blob);
    let inner = wire.string().ok_or("the key data is cut short")?;
    if inner != kind.as_bytes() {
        return Err(format!(
            "the key data is a {:?} key, not {kind}; copy the .pub line unchanged",
            String::from_utf8_lossy(inner)
        ));
    }
    let truncated = || "the key data is cut short; copy the whole .pub line".to_string();
    let bits = match kind.as_str() {
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" => {
            let key = wire.string().ok_or_else(truncated)?;
            if key.len() != 32 {
                return Err("an ed25519 key is 32 bytes; this one is not".into());
            }
            256
        }
        "ssh-rsa" => {
            let e = wire.string().ok_or_else(truncated)?;
            let n = wire.string().ok_or_else(truncated)?;
            if bits_of(e) == 0 {
                return Err("the RSA key's exponent is zero".into());
            }
            let bits = bits_of(n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "the RSA key has {bits} bits, fewer than {MIN_RSA_BITS}; make a new key with \
                     `ssh-keygen -t ed25519`"
                ));
            }
            bits
        }
        _ => {
            let curve = wire.string().ok_or_else(truncated)?;
            let point = wire.string().ok_or_else(truncated)?;
            let (name, bits, len) = match curve {
                b"nistp256" => ("nistp256", 256, 65),
                b"nistp384" => ("nistp384", 384, 97),
                b"nistp521" => ("nistp521", 521, 133),
                _ => return Err("the ECDSA key names an unknown curve".into()),
            };
            if !kind.contains(name) || point.len() != len || point[0] != 4 {
                return Err(format!("the ECDSA key is not a valid {name} point"));
            }
            bits
        }
    };
    if kind.starts_with("sk-") {
        // the application string of a security key
        wire.string().ok_or_else(truncated)?;
    }
    if !wire.0.is_empty() {
        return Err("the key data has bytes after the key; copy the .pub line unchanged".into());
    }
    let digest = sha2::Sha256::digest(&blob);
    Ok(PublicKey {
        kind,
        fingerprint: format!("SHA256:{}", gearhost_sys::base64::encode_unpadded(&digest)),
        base64,
        bits,
        comment,
    })
}

/// One user's key, as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    user: String,
    kind: String,
    key: String,
    fingerprint: String,
    bits: u32,
    comment: String,
    added: String,
}

impl Stored {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            user: self.user.clone(),
            fingerprint: self.fingerprint.clone(),
            kind: self.kind.clone(),
            bits: self.bits,
            comment: self.comment.clone(),
            added: self.added.clone(),
        }
    }
}

/// Every user's keys.
#[derive(Debug)]
pub struct Keys {
    path: PathBuf,
    keys: Mutex<Vec<Stored>>,
}

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Failed, e.to_string())
}

impl Keys {
    /// The keys kept in `<state_dir>/ssh/keys.json` (none yet if it is missing).
    pub fn open(state_dir: &Path) -> anyhow::Result<Keys> {
        let path = state_dir.join("ssh/keys.json");
        let keys = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(Keys {
            path,
            keys: Mutex::new(keys),
        })
    }

    fn save(&self, keys: &[Stored]) -> Result<(), ApiError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(failed)?;
        let text = serde_json::to_vec_pretty(keys).map_err(failed)?;
        crate::state::write_atomic(&self.path, &text).map_err(failed)
    }

    /// Add `line` as one of `user`'s keys.
    pub fn add(&self, user: &str, line: &str, now: String) -> Result<KeyInfo, ApiError> {
        let key = parse(line).map_err(|e| ApiError::new(ErrorKind::Invalid, e))?;
        let mut keys = lock(&self.keys);
        if let Some(known) = keys.iter().find(|k| k.fingerprint == key.fingerprint) {
            let whose = if known.user == user {
                "is already one of your keys; nothing was changed".to_string()
            } else {
                "already belongs to another user: a key logs in as one user only; make a \
                 key of your own with `ssh-keygen -t ed25519`"
                    .to_string()
            };
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("key {} {whose}", key.fingerprint),
            ));
        }
        if keys.iter().filter(|k| k.user == user).count() >= MAX_KEYS_PER_USER {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "{user} has {MAX_KEYS_PER_USER} keys, the most a user may have; remove one \
                     with `gear keys remove FINGERPRINT`"
                ),
            ));
        }
        let stored = Stored {
            user: user.to_string(),
            kind: key.kind,
            key: key.base64,
            fingerprint: key.fingerprint,
            bits: key.bits,
            comment: key.comment,
            added: now,
        };
        let mut next = keys.clone();
        next.push(stored.clone());
        self.save(&next)?;
        *keys = next;
        Ok(stored.info())
    }

    /// `user`'s keys, or everyone's.
    pub fn list(&self, user: Option<&str>) -> Vec<KeyInfo> {
        lock(&self.keys)
            .iter()
            .filter(|k| user.is_none_or(|u| k.user == u))
            .map(Stored::info)
            .collect()
    }

    /// Remove `user`'s key with `fingerprint`.
    pub fn remove(&self, user: &str, fingerprint: &str) -> Result<KeyInfo, ApiError> {
        let mut keys = lock(&self.keys);
        let Some(at) = keys
            .iter()
            .position(|k| k.user == user && k.fingerprint == fingerprint)
        else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("{user} has no key {fingerprint}; `gear keys list` shows the fingerprints"),
            ));
        };
        let mut next = keys.clone();
        let gone = next.remove(at);
        self.save(&next)?;
        *keys = next;
        Ok(gone.info())
    }

    /// Whose key of type `kind` with data `base64` this is.
    pub fn owner(&self, kind: &str, base64: &str) -> Option<String> {
        lock(&self.keys)
            .iter()
            .find(|k| k.kind == kind && k.key == base64)
            .map(|k| k.user.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // made with ssh-keygen, which printed the fingerprint below for it
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL+f8trkiRpdf5NvUOeaNj2FjtoXCob/fQavNsL5ELpY ada@laptop";

    #[test]
    fn an_ed25519_key_parses_with_its_fingerprint_and_comment() {
        let k = parse(ED25519).expect("valid");
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.bits, 256);
        assert_eq!(k.comment, "ada@laptop");
        assert_eq!(
            k.fingerprint,
            "SHA256:ogxgK+K+BMjIVXIJ3Brg3TDrSaKVtJ16KTU0KoLXuVc"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        for (line, says) in [
            ("", "no key"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
            ("ssh-dss AAAAB3NzaC1kc3M= x", "not a key type"),
            ("command=\"x\" ssh-ed25519 AAAA", "options"),
            ("ssh-ed25519", "no key data"),
            ("ssh-ed25519 !!!", "not base64"),
            // an RSA blob under an ed25519 type
            ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB", "not ssh-ed25519"),
            // type string only
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "cut short"),
        ] {
            let e = parse(line).expect_err(line);
            assert!(e.contains(says), "{line:?}: {e}");
        }
        // a 1024-bit RSA modulus
        let mut blob = Vec::new();
        for field in [&b"ssh-rsa"[..], &[1, 0, 1], &[0x80; 128]] {
            blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
            blob.extend_from_slice(field);
        }
        let line = format!("ssh-rsa {}", gearhost_sys::base64::encode_unpadded(&blob));
        let e = parse(&line).expect_err("small");
        assert!(e.contains("1024 bits"), "{e}");
    }

    #[test]
    fn keys_are_kept_per_user_and_each_key_has_one_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keys::open(dir.path()).expect("open");
        let added = keys.add("ada", ED25519, "t".into()).expect("added");
        assert_eq!(added.user, "ada");
        let again = keys.add("bob", ED25519, "t".into()).expect_err("taken");
        assert!(again.message.contains("another user") && !again.message.contains("ada"));
        let k = parse(ED25519).expect("valid");
        assert_eq!(keys.owner(&k.kind, &k.base64).as_deref(), Some("ada"));
        // kept across a restart
        let reopened = Keys::open(dir.path()).expect("open");
        assert_eq!(reopened.list(Some("ada")).len(), 1);
        assert!(reopened.list(Some("bob")).is_empty());
        let e = reopened
            .remove("bob", &added.fingerprint)
            .expect_err("not bob's");
        assert_eq!(e.kind, ErrorKind::NotFound);
        reopened.remove("ada", &added.fingerprint).expect("removed");
        assert_eq!(reopened.owner(&k.kind, &k.base64), None);
    }
}
