//! `gear image pull|list|prune`: the node's image store as operators see it.

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind};
use crate::images::StoredImage;

/// The longest a pull may take, every layer included.
pub(super) const PULL_TIME: std::time::Duration = std::time::Duration::from_secs(1800);

fn summary(image: &StoredImage, fetched: usize, shared: usize) -> reply::ImageSummary {
    reply::ImageSummary {
        reference: image.reference.clone(),
        digest: image.digest.clone(),
        layers: image.layers.len(),
        command: image
            .config
            .entrypoint
            .iter()
            .chain(&image.config.cmd)
            .cloned()
            .collect(),
        ports: image.config.exposed_ports.clone(),
        fetched,
        shared,
    }
}

impl Node {
    /// Pulls the image at `reference` into the store.
    pub async fn image_pull(
        &self,
        reference: &str,
        insecure: bool,
        credentials: Option<crate::api::ops::RegistryCredentials>,
    ) -> ApiResult<reply::ImageSummary> {
        let target = super::cartridge_pull::registry_target(reference, insecure, credentials)?;
        let pulled = tokio::time::timeout(PULL_TIME, self.images.pull(&target))
            .await
            .unwrap_or_else(|_| Err(format!("no whole image within {} s", PULL_TIME.as_secs())));
        match pulled {
            Ok((image, done)) => Ok(summary(&image, done.fetched, done.shared)),
            Err(e) => Err(ApiError::new(
                ErrorKind::Invalid,
                format!("cannot pull {reference}, nothing of it was kept: {e}"),
            )),
        }
    }

    /// The images in the store.
    pub fn image_list(&self) -> Vec<reply::ImageSummary> {
        self.images
            .images()
            .iter()
            .map(|i| summary(i, 0, 0))
            .collect()
    }

    /// Removes the images no gear's deployment runs, and the layers no image left lists.
    pub async fn image_prune(&self) -> reply::ImagesPruned {
        // a pull for a gear finishes recording its image first
        let _gc = self.images_gc.write().await;
        let keep = self.images_in_use();
        let images = self.images.clone();
        let (images, layers) = tokio::task::spawn_blocking(move || images.collect(&keep))
            .await
            .unwrap_or_default();
        reply::ImagesPruned { images, layers }
    }
}
