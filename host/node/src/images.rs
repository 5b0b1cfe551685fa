//! The node's image store: container images pulled from OCI registries,
//! kept content-addressed so gears share layers, and collected when no gear
//! uses them. Layout under `<state-dir>/images`:
//! - `layers/<hex>/`: one layer unpacked as an overlay lower directory
//!   ([`crate::layer`]), named by the digest of its blob as the registry
//!   stores it;
//! - `manifests/<hex>.json`: an image as pulled (reference, digest, what it
//!   runs, its layers bottom first), named by its manifest's digest;
//! - `.incoming.*`: a blob or layer being fetched or unpacked (a layer
//!   appears under its name only once whole, by a rename).
//!
//! Every blob is verified by its digest and bounded by its size before it
//! is unpacked; a layer's content is bounded again while unpacked (a gzip
//! bomb stops at the limit).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layer::{LayerLimits, unpack_layer};

/// The largest layer blob fetched.
pub const MOST_LAYER_BLOB: u64 = 4 << 30;

/// What one unpacked layer may hold.
pub const LAYER_LIMITS: LayerLimits = LayerLimits {
    max_bytes: 16 << 30,
    max_entries: 2_000_000,
};

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// The reference it was pulled as.
    pub reference: String,
    /// The digest of its image manifest (`linux/amd64`).
    pub digest: String,
    /// The digest of the index it was chosen from, if any.
    #[serde(default)]
    pub index: Option<String>,
    /// What it runs.
    pub config: gearhost_oci::ImageConfig,
    /// Its layers' digests, bottom first.
    pub layers: Vec<String>,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Layers fetched and unpacked now.
    pub fetched: usize,
    /// Layers the store had already.
    pub shared: usize,
    /// Bytes fetched.
    pub bytes: u64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: LayerLimits,
}

fn hex(digest: &str) -> Result<&str, String> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{digest} is not a sha256 digest"))
}

impl ImageStore {
    /// The store of the node whose state directory is `state_dir`; each layer
    /// may hold at most `limits`.
    pub fn new(state_dir: &Path, limits: LayerLimits) -> ImageStore {
        ImageStore {
            root: state_dir.join("images"),
            limits,
        }
    }

    fn layer_dir(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("layers").join(hex(digest)?))
    }

    fn manifest_path(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self
            .root
            .join("manifests")
            .join(format!("{}.json", hex(digest)?)))
    }

    fn staging(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        self.root.join(format!(
            ".incoming.{}.{}.{what}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ))
    }

    /// Removes what pulls of an earlier node left half done.
    pub fn remove_stale(&self) {
        let own = format!(".incoming.{}.", std::process::id());
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".incoming.") && !name.starts_with(&own) {
                let _ = crate::state::remove_tree(&entry.path());
            }
        }
    }

    /// Pulls the image at `target` into the store: the layers it lacks are
    /// fetched, verified and unpacked; the image is recorded last.
    pub async fn pull(
        &self,
        target: &gearhost_oci::Target,
    ) -> Result<(StoredImage, Pulled), String> {
        let image = gearhost_oci::resolve_image(target)
            .await
            .map_err(|e| e.to_string())?;
        for dir in ["layers", "manifests"] {
            std::fs::create_dir_all(self.root.join(dir)).map_err(|e| e.to_string())?;
        }
        let mut done = Pulled::default();
        for layer in &image.layers {
            let dir = self.layer_dir(&layer.digest)?;
            if dir.is_dir() {
                done.shared += 1;
                continue;
            }
            let blob_path = self.staging("blob");
            let result = self.fetch_and_unpack(target, layer, &blob_path, &dir).await;
            let _ = std::fs::remove_file(&blob_path);
            result?;
            done.fetched += 1;
            done.bytes += layer.size;
        }
        let stored = StoredImage {
            reference: target.reference().whole(),
            digest: image.digest.clone(),
            index: image.index.clone(),
            config: image.config.clone(),
            layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
        crate::state::write_atomic(&self.manifest_path(&image.digest)?, &json)
            .map_err(|e| e.to_string())?;
        Ok((stored, done))
    }

    async fn fetch_and_unpack(
        &self,
        target: &gearhost_oci::Target,
        layer: &gearhost_oci::Layer,
        blob_path: &Path,
        dir: &Path,
    ) -> Result<(), String> {
        let file = tokio::fs::File::create(blob_path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", blob_path.display()))?;
        let mut file = gearhost_oci::fetch_layer(target, layer, file, MOST_LAYER_BLOB)
            .await
            .map_err(|e| e.to_string())?;
        use tokio::io::AsyncWriteExt;
        file.flush().await.map_err(|e| e.to_string())?;
        drop(file);
        let staging = self.staging("layer");
        let (blob, into, limits, compression) = (
            blob_path.to_path_buf(),
            staging.clone(),
            self.limits,
            layer.compression,
        );
        let unpacked = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&blob).map_err(|e| e.to_string())?;
            let reader: Box<dyn std::io::Read> = match compression {
                gearhost_oci::Compression::None => Box::new(std::io::BufReader::new(file)),
                gearhost_oci::Compression::Gzip => {
                    Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
                }
            };
            unpack_layer(reader, &into, limits).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Err(e) = unpacked {
            let _ = crate::state::remove_tree(&staging);
            return Err(format!("layer {} was refused: {e}", layer.digest));
        }
        match std::fs::rename(&staging, dir) {
            Ok(()) => Ok(()),
            // another pull unpacked the same layer meanwhile: the same content
            Err(_) if dir.is_dir() => {
                let _ = crate::state::remove_tree(&staging);
                Ok(())
            }
            Err(e) => {
                let _ = crate::state::remove_tree(&staging);
                Err(format!("cannot store layer {}: {e}", layer.digest))
            }
        }
    }

    /// The image of manifest digest `digest`, if the store has it.
    pub fn image(&self, digest: &str) -> Option<StoredImage> {
        let text = std::fs::read(self.manifest_path(digest).ok()?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every image in the store.
    pub fn images(&self) -> Vec<StoredImage> {
        let mut all: Vec<StoredImage> = std::fs::read_dir(self.root.join("manifests"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|t| serde_json::from_slice(&t).ok())
            .collect();
        all.sort_by(|a, b| a.reference.cmp(&b.reference));
        all
    }

    /// The directories of `image`'s layers, top first (overlayfs's
    /// `lowerdir` order); an error names a layer the store lacks.
    pub fn lower_dirs(&self, image: &StoredImage) -> Result<Vec<PathBuf>, String> {
        image
            .layers
            .iter()
            .rev()
            .map(|d| {
                let dir = self.layer_dir(d)?;
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(format!(
                        "layer {d} of {} is not in the store; pull it again",
                        image.reference
                    ))
                }
            })
            .collect()
    }

    /// Removes the images not in `keep` (manifest digests) and the layers no
    /// kept image uses. Returns (images, layers) removed.
    pub fn collect(&self, keep: &[String]) -> (usize, usize) {
        let mut used = std::collections::BTreeSet::new();
        let mut images = 0;
        for image in self.images() {
            if keep.contains(&image.digest) {
                used.extend(
                    image
                        .layers
                        .iter()
                        .filter_map(|d| hex(d).ok().map(str::to_string)),
                );
            } else if let Ok(path) = self.manifest_path(&image.digest)
                && std::fs::remove_file(path).is_ok()
            {
                images += 1;
            }
        }
        let mut layers = 0;
        for entry in std::fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !used.contains(&name) && crate::state::remove_tree(&entry.path()).is_ok() {
                layers += 1;
            }
        }
        (images, layers)
    }
}
