//! Cartridges in OCI registries, in the CNCF "Wasm OCI artifact" layout: an
//! image manifest whose config has the media type
//! `application/vnd.wasm.config.v0+json` (the component's imports and
//! exports, so a node can check the contract before it downloads the
//! component) and whose first layer is the component (`application/wasm`).
//! The cartridge's `cartridge.toml` travels as a second, typed layer
//! ([`MANIFEST_LAYER`]); an artifact without it (made by other tools) can
//! carry the manifest in the component, as a custom section named
//! [`MANIFEST_SECTION`].
//!
//! Registry traffic is oci-client's; this crate decides the layout, resolves
//! credentials the way Docker does, and bounds and verifies everything it
//! pulls: every blob by its digest and its size, the manifest by its size
//! (and by its digest when the reference names one).

#![forbid(unsafe_code)]

mod auth;
mod bounded;
mod config;
mod image;

use std::str::FromStr;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

pub use auth::{Credentials, credentials_for};
pub use config::{Component, WasmConfig};
pub use image::{Compression, Image, ImageConfig, Layer, fetch_layer, resolve_image};

/// The config's media type (CNCF Wasm OCI artifact).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The component layer's media type.
pub const WASM_LAYER: &str = "application/wasm";
/// The media type of the layer that carries `cartridge.toml`.
pub const MANIFEST_LAYER: &str = "application/vnd.gearhost.cartridge.manifest.v1+toml";
/// The custom section that may carry `cartridge.toml` inside the component.
pub const MANIFEST_SECTION: &str = "gearhost:cartridge.toml";
/// The image manifest's media type.
pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The largest image manifest accepted.
pub const MOST_MANIFEST: usize = 4 << 20;
/// The largest config blob accepted.
pub const MOST_CONFIG: u64 = 1 << 20;
/// The largest `cartridge.toml` accepted.
pub const MOST_CARTRIDGE_TOML: u64 = 1 << 20;
/// The largest component accepted.
pub const MOST_COMPONENT: u64 = 256 << 20;

/// What went wrong talking to a registry or with what it holds.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference does not parse.
    #[error(
        "{reference:?} is not an OCI reference ({why}); write registry/namespace/name:version, e.g. registry.example:5000/carts/python:0.1.0"
    )]
    Reference {
        /// What was given.
        reference: String,
        /// Why.
        why: String,
    },
    /// Plain HTTP was asked for a registry that is not on this machine.
    #[error(
        "--insecure (plain HTTP) is only for a registry on loopback; {registry} is not, use HTTPS"
    )]
    Insecure {
        /// The registry.
        registry: String,
    },
    /// The registry answered with an error, or could not be reached.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry.
        registry: String,
        /// What it said.
        message: String,
    },
    /// What the registry holds is not a cartridge, or not what it claims.
    #[error("{0}")]
    Refused(String),
    /// Credentials could not be read.
    #[error("{0}")]
    Credentials(String),
}

/// Where an artifact lives and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    reference: Reference,
    insecure: bool,
    credentials: Option<Credentials>,
}

impl Target {
    /// `reference` (with or without an `oci://` prefix), over HTTPS unless
    /// `insecure` (allowed for a loopback registry only), with `credentials`.
    pub fn new(
        reference: &str,
        insecure: bool,
        credentials: Option<Credentials>,
    ) -> Result<Target, OciError> {
        let reference = parse_reference(reference)?;
        if insecure && !loopback(reference.registry()) {
            return Err(OciError::Insecure {
                registry: reference.registry().to_string(),
            });
        }
        Ok(Target {
            reference,
            insecure,
            credentials,
        })
    }

    /// The parsed reference.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The registry's host (and port).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    fn client(&self) -> Result<Client, OciError> {
        // reqwest's rustls takes the process's provider: ring, like the rest of
        // Gearhost (see the frontend's TLS for why ring and its deprecation)
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let protocol = if self.insecure {
            ClientProtocol::HttpsExcept(vec![self.registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        // `Client::new` would fall back to a client that panics when the machine has no CA
        // certificates; the node must say so instead
        Client::try_from(ClientConfig {
            protocol,
            ..ClientConfig::default()
        })
        .map_err(|e| OciError::Registry {
            registry: self.registry().to_string(),
            message: format!(
                "cannot make an HTTPS client ({e}); install the system's CA certificates \
                 (Debian: ca-certificates)"
            ),
        })
    }

    fn auth(&self) -> RegistryAuth {
        match &self.credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    fn registry_error(&self, e: impl std::fmt::Display) -> OciError {
        OciError::Registry {
            registry: self.registry().to_string(),
            message: e.to_string(),
        }
    }
}

/// Parses `oci://registry/namespace/name:tag` or `...@sha256:...`. The
/// registry must be named (no implicit Docker Hub).
pub fn parse_reference(text: &str) -> Result<Reference, OciError> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    let refuse = |why: &str| OciError::Reference {
        reference: text.to_string(),
        why: why.to_string(),
    };
    let first = bare.split('/').next().unwrap_or_default();
    if !bare.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost")
    {
        return Err(refuse("it names no registry"));
    }
    let reference = Reference::from_str(bare).map_err(|e| refuse(&e.to_string()))?;
    if reference.tag().is_none() && reference.digest().is_none() {
        return Err(refuse("it has neither a tag nor a digest"));
    }
    Ok(reference)
}

/// Whether `registry` (host or host:port) is on this machine.
fn loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        gearhost_sys::hex::encode(&Sha256::digest(bytes))
    )
}

/// A cartridge to publish: its manifest file and component, with the
/// component's interfaces for the config.
#[derive(Debug, Clone)]
pub struct Publication {
    /// `cartridge.toml`, as written.
    pub manifest: Vec<u8>,
    /// The component.
    pub wasm: Vec<u8>,
    /// What the component imports and exports (full interface names).
    pub component: Component,
}

/// Pushes `publication` to `target` and returns the manifest's digest.
pub async fn push(target: &Target, publication: &Publication) -> Result<String, OciError> {
    let client = target.client()?;
    client
        .auth(target.reference(), &target.auth(), RegistryOperation::Push)
        .await
        .map_err(|e| target.registry_error(e))?;
    let wasm_digest = digest_of(&publication.wasm);
    let manifest_digest = digest_of(&publication.manifest);
    let config = WasmConfig::new(
        publication.component.clone(),
        vec![wasm_digest.clone(), manifest_digest.clone()],
    );
    let config_bytes = serde_json::to_vec(&config).map_err(|e| OciError::Refused(e.to_string()))?;
    let config_digest = digest_of(&config_bytes);
    let blobs = [
        (&config_bytes, &config_digest),
        (&publication.wasm, &wasm_digest),
        (&publication.manifest, &manifest_digest),
    ];
    for (bytes, digest) in blobs {
        client
            .push_blob(target.reference(), bytes.clone(), digest)
            .await
            .map_err(|e| target.registry_error(e))?;
    }
    let descriptor = |media: &str, digest: &str, bytes: &[u8]| OciDescriptor {
        media_type: media.to_string(),
        digest: digest.to_string(),
        size: bytes.len() as i64,
        ..OciDescriptor::default()
    };
    let image = OciImageManifest {
        schema_version: 2,
        media_type: Some(IMAGE_MANIFEST.to_string()),
        config: descriptor(CONFIG_MEDIA_TYPE, &config_digest, &config_bytes),
        layers: vec![
            descriptor(WASM_LAYER, &wasm_digest, &publication.wasm),
            descriptor(MANIFEST_LAYER, &manifest_digest, &publication.manifest),
        ],
        artifact_type: None,
        subject: None,
        annotations: None,
    };
    let body = serde_json::to_vec(&image).map_err(|e| OciError::Refused(e.to_string()))?;
    let digest = digest_of(&body);
    client
        .push_manifest_raw(
            target.reference(),
            body,
            http::HeaderValue::from_static(IMAGE_MANIFEST),
        )
        .await
        .map_err(|e| target.registry_error(e))?;
    Ok(digest)
}

/// A cartridge pulled and verified.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image manifest's digest (computed here, not taken from the registry).
    pub digest: String,
    /// The config.
    pub config: WasmConfig,
    /// The component.
    pub wasm: Vec<u8>,
    /// `cartridge.toml` from its layer, or `None` when the artifact has no
    /// such layer (look in the component's [`MANIFEST_SECTION`]).
    pub manifest: Option<Vec<u8>>,
}

/// Pulls the cartridge at `target`: the manifest (bounded, checked against
/// the reference's digest if it has one, its layout checked), then the
/// config, which `accept` checks before anything large is fetched, then the
/// layers, each bounded by its descriptor's size and verified by its digest.
pub async fn pull(
    target: &Target,
    accept: impl FnOnce(&WasmConfig) -> Result<(), String>,
) -> Result<Pulled, OciError> {
    let client = target.client()?;
    let (body, digest) = manifest(&client, target, target.reference(), &[IMAGE_MANIFEST]).await?;
    let image: OciImageManifest = serde_json::from_slice(&body).map_err(|e| {
        OciError::Refused(format!(
            "the image manifest is not an OCI image manifest: {e}"
        ))
    })?;
    if image.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(OciError::Refused(format!(
            "the artifact's config is {:?}, not a Wasm component's ({CONFIG_MEDIA_TYPE}); is it a cartridge?",
            image.config.media_type
        )));
    }
    let config_bytes = blob(&client, target, &image.config, MOST_CONFIG, "config").await?;
    let config: WasmConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::Refused(format!("the artifact's config does not parse: {e}")))?;
    accept(&config).map_err(OciError::Refused)?;
    let wasm_layers: Vec<&OciDescriptor> = image
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER)
        .collect();
    let [wasm_layer] = wasm_layers.as_slice() else {
        return Err(OciError::Refused(format!(
            "the artifact has {} {WASM_LAYER} layers; a cartridge has exactly one",
            wasm_layers.len()
        )));
    };
    let wasm = blob(&client, target, wasm_layer, MOST_COMPONENT, "component").await?;
    let manifest = match image.layers.iter().find(|l| l.media_type == MANIFEST_LAYER) {
        Some(layer) => Some(
            blob(
                &client,
                target,
                layer,
                MOST_CARTRIDGE_TOML,
                "cartridge.toml",
            )
            .await?,
        ),
        None => None,
    };
    Ok(Pulled {
        digest,
        config,
        wasm,
        manifest,
    })
}

/// The manifest at `reference` (of `target`'s registry), of one of the
/// `accepted` media types: at most [`MOST_MANIFEST`] bytes, with the digest
/// the reference names if it names one. Returns it and its digest.
async fn manifest(
    client: &Client,
    target: &Target,
    reference: &Reference,
    accepted: &[&str],
) -> Result<(bytes::Bytes, String), OciError> {
    let (body, _) = client
        .pull_manifest_raw(reference, &target.auth(), accepted)
        .await
        .map_err(|e| match e {
            // what came is not what was asked for: refused, not a registry failure
            oci_client::errors::OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => OciError::Refused(format!(
                "the registry's manifest has digest {actual}, not the {expected} asked for"
            )),
            other => target.registry_error(other),
        })?;
    if body.len() > MOST_MANIFEST {
        return Err(OciError::Refused(format!(
            "the manifest is {} bytes, more than the {} accepted",
            body.len(),
            MOST_MANIFEST
        )));
    }
    let digest = digest_of(&body);
    if let Some(want) = reference.digest()
        && want != digest
    {
        return Err(OciError::Refused(format!(
            "the registry's manifest has digest {digest}, not the {want} asked for"
        )));
    }
    Ok((body, digest))
}

/// One blob, at most `most` bytes and exactly its descriptor's size, with
/// its digest verified.
async fn blob(
    client: &Client,
    target: &Target,
    descriptor: &OciDescriptor,
    most: u64,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let size = checked_size(descriptor, most, what)?;
    fetch(client, target, descriptor, bounded::Sink::new(size), what).await
}

/// The size a descriptor gives, if it is at most `most`.
fn checked_size(descriptor: &OciDescriptor, most: u64, what: &str) -> Result<u64, OciError> {
    let size = u64::try_from(descriptor.size).map_err(|_| {
        OciError::Refused(format!(
            "the {what} layer claims a negative size ({})",
            descriptor.size
        ))
    })?;
    if size > most {
        return Err(OciError::Refused(format!(
            "the {what} layer is {size} bytes, more than the {most} accepted"
        )));
    }
    Ok(size)
}

/// Pulls the blob of `descriptor` into `sink` (bounded by the descriptor's
/// size), verifying its digest and that it is exactly that size.
async fn fetch<W: tokio::io::AsyncWrite + Unpin>(
    client: &Client,
    target: &Target,
    descriptor: &OciDescriptor,
    mut sink: bounded::Bounded<W>,
    what: &str,
) -> Result<W, OciError> {
    let size = u64::try_from(descriptor.size).unwrap_or(0);
    let pulled = client
        .pull_blob(target.reference(), descriptor, &mut sink)
        .await;
    if sink.overflowed() {
        return Err(OciError::Refused(format!(
            "the registry sent more than the {size} bytes the manifest gives the {what} layer ({}); it was refused",
            descriptor.digest
        )));
    }
    pulled.map_err(|e| {
        OciError::Refused(format!(
            "the {what} layer ({}) did not come whole and intact: {e}",
            descriptor.digest
        ))
    })?;
    if sink.written() != size {
        return Err(OciError::Refused(format!(
            "the registry sent {} bytes for the {what} layer ({}), whose size the manifest gives as {size}",
            sink.written(),
            descriptor.digest
        )));
    }
    Ok(sink.into_inner())
}

/// Finds the custom section `name` of a component (top level only) and
/// returns its contents.
pub fn custom_section<'a>(wasm: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // the header: magic and a version/layer word
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let (len, used) = leb128(wasm.get(at..)?)?;
        at += used;
        let body = wasm.get(at..at.checked_add(len)?)?;
        at += len;
        if id == 0 {
            let (name_len, used) = leb128(body)?;
            let section_name = body.get(used..used.checked_add(name_len)?)?;
            if section_name == name.as_bytes() {
                return body.get(used + name_len..);
            }
        }
    }
    None
}

/// Appends custom section `name` with `contents` to a component.
pub fn with_custom_section(wasm: &[u8], name: &str, contents: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_leb128(&mut body, name.len());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(contents);
    let mut out = wasm.to_vec();
    out.push(0);
    put_leb128(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn leb128(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: usize = 0;
    for (i, b) in bytes.iter().enumerate().take(5) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn put_leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_and_a_tag_or_digest() {
        let r = parse_reference("oci://127.0.0.1:5000/carts/diy:0.1.0").expect("parses");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "carts/diy");
        assert_eq!(r.tag(), Some("0.1.0"));
        let d = format!("localhost:5000/carts/diy@sha256:{}", "a".repeat(64));
        assert!(parse_reference(&d).expect("digest").digest().is_some());
        for bad in [
            "diy:0.1.0",
            "carts/diy:0.1.0",
            "oci://",
            "localhost:5000/Carts/DIY:1",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_is_for_loopback_registries_only() {
        assert!(Target::new("127.0.0.1:5000/c/d:1.0.0", true, None).is_ok());
        assert!(Target::new("localhost:5000/c/d:1.0.0", true, None).is_ok());
        let e = Target::new("registry.example:5000/c/d:1.0.0", true, None).expect_err("refused");
        assert!(
            e.to_string().contains("only for a registry on loopback"),
            "{e}"
        );
    }

    #[test]
    fn a_custom_section_is_found_after_it_is_appended() {
        let empty = b"\0asm\x0d\x00\x01\x00".to_vec();
        assert_eq!(custom_section(&empty, MANIFEST_SECTION), None);
        let long = vec![b'x'; 300];
        let with = with_custom_section(&empty, MANIFEST_SECTION, &long);
        assert_eq!(custom_section(&with, MANIFEST_SECTION), Some(&long[..]));
        assert_eq!(custom_section(&with, "other"), None);
        // a truncated section is not read past the end
        assert_eq!(
            custom_section(&with[..with.len() - 1], MANIFEST_SECTION),
            None
        );
    }
}
