//! Container images: an image reference resolved to the `linux/amd64`
//! image (through an image index or Docker manifest list), its config (what
//! to run) and its layers, each fetched to a file bounded by its size and
//! verified by its digest.

use oci_client::Reference;
use oci_client::manifest::OciDescriptor;
use serde::Deserialize;

use crate::{OciError, Target, bounded, checked_size, fetch, manifest};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The largest image config accepted.
pub const MOST_IMAGE_CONFIG: u64 = 4 << 20;
/// The most layers an image may have.
pub const MOST_LAYERS: usize = 128;

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip.
    Gzip,
}

/// One layer of an image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Its digest (of the blob as stored, compressed).
    pub digest: String,
    /// Its size as stored.
    pub size: u64,
    /// Its compression.
    pub compression: Compression,
    descriptor: OciDescriptor,
}

/// What an image says to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `ExposedPorts`, as `8080/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// `User`.
    #[serde(default)]
    pub user: Option<String>,
}

/// An image resolved for `linux/amd64`.
#[derive(Debug, Clone)]
pub struct Image {
    /// The digest of its image manifest.
    pub digest: String,
    /// The digest of the index it was chosen from, if it came from one.
    pub index: Option<String>,
    /// What it runs.
    pub config: ImageConfig,
    /// Its layers, bottom first.
    pub layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
    #[serde(default)]
    config: Option<OciDescriptor>,
    #[serde(default)]
    layers: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    user: Option<String>,
}

/// Resolves the image at `target` for `linux/amd64`: its manifest (through
/// an index if the reference names one), its config, its layers.
pub async fn resolve_image(target: &Target) -> Result<Image, OciError> {
    let client = target.client()?;
    let accepted = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
    let (body, digest) = manifest(&client, target, target.reference(), &accepted).await?;
    let parsed: Manifest = serde_json::from_slice(&body)
        .map_err(|e| OciError::Refused(format!("the manifest does not parse: {e}")))?;
    let is_index = matches!(parsed.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
        || (parsed.config.is_none() && !parsed.manifests.is_empty());
    let (parsed, digest, index) = if is_index {
        let chosen = parsed
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| {
                OciError::Refused(
                    "the image has no linux/amd64 variant, the only one this node runs".into(),
                )
            })?;
        let r = target.reference();
        let by_digest = Reference::with_digest(
            r.registry().to_string(),
            r.repository().to_string(),
            chosen.digest.clone(),
        );
        let (body, image_digest) = manifest(
            &client,
            target,
            &by_digest,
            &[OCI_MANIFEST, DOCKER_MANIFEST],
        )
        .await?;
        let parsed: Manifest = serde_json::from_slice(&body)
            .map_err(|e| OciError::Refused(format!("the image manifest does not parse: {e}")))?;
        (parsed, image_digest, Some(digest))
    } else {
        (parsed, digest, None)
    };
    let config = parsed
        .config
        .ok_or_else(|| OciError::Refused("the image manifest has no config".into()))?;
    if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
        return Err(OciError::Refused(format!(
            "the artifact's config is {:?}, not a container image's; is it an image?",
            config.media_type
        )));
    }
    if parsed.layers.len() > MOST_LAYERS {
        return Err(OciError::Refused(format!(
            "the image has {} layers, more than the {MOST_LAYERS} accepted",
            parsed.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for l in parsed.layers {
        let compression = match l.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd" => {
                return Err(OciError::Refused(
                    "the image has zstd-compressed layers, which this node does not unpack; \
                     push it with gzip layers"
                        .into(),
                ));
            }
            other => {
                return Err(OciError::Refused(format!(
                    "the image has a layer of media type {other:?}, which is not a file system layer"
                )));
            }
        };
        let size = u64::try_from(l.size)
            .map_err(|_| OciError::Refused(format!("layer {} claims a negative size", l.digest)))?;
        layers.push(Layer {
            digest: l.digest.clone(),
            size,
            compression,
            descriptor: l,
        });
    }
    let size = checked_size(&config, MOST_IMAGE_CONFIG, "config")?;
    let bytes = fetch(&client, target, &config, bounded::Sink::new(size), "config").await?;
    let blob: ConfigBlob = serde_json::from_slice(&bytes)
        .map_err(|e| OciError::Refused(format!("the image config does not parse: {e}")))?;
    let run = blob.config;
    let config = ImageConfig {
        entrypoint: run
            .as_ref()
            .and_then(|c| c.entrypoint.clone())
            .unwrap_or_default(),
        cmd: run.as_ref().and_then(|c| c.cmd.clone()).unwrap_or_default(),
        env: run.as_ref().and_then(|c| c.env.clone()).unwrap_or_default(),
        working_dir: run
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty()),
        exposed_ports: run
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default(),
        user: run
            .as_ref()
            .and_then(|c| c.user.clone())
            .filter(|u| !u.is_empty()),
    };
    Ok(Image {
        digest,
        index,
        config,
        layers,
    })
}

/// Fetches `layer` of the image at `target` into `file`: at most its size
/// and `most`, verified by its digest.
pub async fn fetch_layer(
    target: &Target,
    layer: &Layer,
    file: tokio::fs::File,
    most: u64,
) -> Result<tokio::fs::File, OciError> {
    let size = checked_size(&layer.descriptor, most, "file system")?;
    let client = target.client()?;
    fetch(
        &client,
        target,
        &layer.descriptor,
        bounded::Bounded::over(file, size),
        "file system",
    )
    .await
}
