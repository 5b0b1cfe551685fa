//! Image gears: a gear of the `image` cartridge runs a container image. One deployment of it
//! is an image pulled into the node's store ([`crate::images`]) and described in the
//! deployment's directory by `image.json`, which the cartridge's hooks read to start what the
//! image says. Its root is an overlay of the image's layers (shared with every gear of the
//! image) under an upper layer of the deployment's own, `deployments/.root-<n>/` in the gear's
//! directory (inside its disk quota). The node mounts that overlay once, on first use, at
//! `<state>/roots/<gear id>.<n>`, and every process of the gear gets a clone of that one mount
//! (see `SandboxSpec::root`); the mount goes when the deployment or the gear goes.

use std::path::PathBuf;

use gearhost_sandbox::overlay;
use serde::{Deserialize, Serialize};

use super::*;
use crate::api::ops::RegistryCredentials;
use crate::api::reply;
use crate::state;

/// The cartridge whose gears run images.
pub const IMAGE_CARTRIDGE: &str = "image";

/// The file of an image deployment that says what it runs.
pub const IMAGE_FILE: &str = "image.json";

/// An image to deploy.
#[derive(Debug, Clone)]
pub struct ImageSource {
    /// `registry/repository:tag` or `...@sha256:...`.
    pub reference: String,
    /// Plain HTTP (a registry on loopback).
    pub insecure: bool,
    /// The caller's credentials for the registry.
    pub credentials: Option<RegistryCredentials>,
    /// The port the app serves HTTP on, when the caller says; otherwise the image's first
    /// exposed TCP port.
    pub port: Option<u16>,
}

/// `image.json`: what the image cartridge's hooks start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageDeployment {
    /// The reference it was pulled as.
    pub reference: String,
    /// The digest of its manifest.
    pub digest: String,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, if any.
    pub working_dir: Option<String>,
    /// The port the app serves HTTP on, if known.
    pub port: Option<u16>,
    /// `User`, as the image asks for it (the gear's own uid runs it in any case).
    pub user: Option<String>,
}

/// The first exposed TCP port of an image (`8080/tcp`, or `8080`, which means TCP).
pub fn first_tcp_port(exposed: &[String]) -> Option<u16> {
    exposed.iter().find_map(|p| {
        let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        (proto.eq_ignore_ascii_case("tcp"))
            .then(|| port.parse().ok())
            .flatten()
            .filter(|&n: &u16| n > 0)
    })
}

/// The `PATH` an image's `Env` sets, if it does.
pub fn image_path(env: &[String]) -> Option<&str> {
    env.iter().find_map(|kv| kv.strip_prefix("PATH="))
}

impl Node {
    /// Deploy the image `image` to `gear`, a gear of the `image` cartridge (see
    /// [`Node::deploy`] for what follows the pull).
    pub async fn deploy_image(
        &self,
        gear: &GearRef,
        image: ImageSource,
        progress: &Progress,
    ) -> ApiResult<reply::Deployed> {
        // the image stays in the store until the gear's record names it
        let _gc = self.images_gc.read().await;
        let source = image.reference.clone();
        self.deploy_content(
            gear,
            &source,
            super::deploy::Content::Image(image),
            progress,
        )
        .await
    }

    /// Where deployment `id`'s root is mounted.
    pub(super) fn root_mount_point(&self, g: &Gear, id: u32) -> PathBuf {
        self.config
            .state_dir
            .join("roots")
            .join(format!("{}.{id}", g.record().id))
    }

    /// The upper and work directories of deployment `id`'s root.
    fn root_layers(g: &Gear, id: u32) -> PathBuf {
        g.paths.root.join("deployments").join(format!(".root-{id}"))
    }

    /// What deployment `id` of an image gear runs (`None` for other deployments).
    pub(super) fn image_deployment_of(&self, g: &Gear, id: u32) -> Option<ImageDeployment> {
        g.record()
            .deployments
            .iter()
            .find(|d| d.id == id)?
            .image
            .as_ref()?;
        let text = std::fs::read(g.paths.deployment(id).join(IMAGE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Pulls `image` into the store and makes deployment `id` of it: its directory with
    /// `image.json`, and an empty upper layer. Returns the image's digest and the port its
    /// app serves on, when known.
    pub(super) async fn image_deployment(
        &self,
        g: &Gear,
        id: u32,
        image: &ImageSource,
        progress: &Progress,
    ) -> ApiResult<(String, Option<u16>)> {
        let _ = progress.send(format!("pulling {}", image.reference));
        let target = super::cartridge_pull::registry_target(
            &image.reference,
            image.insecure,
            image.credentials.clone(),
        )?;
        let pulled = tokio::time::timeout(super::image_ops::PULL_TIME, self.images.pull(&target))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no whole image within {} s",
                    super::image_ops::PULL_TIME.as_secs()
                ))
            });
        let (stored, done) = pulled.map_err(|e| {
            invalid(format!(
                "cannot pull {}, nothing was deployed: {e}",
                image.reference
            ))
        })?;
        let _ = progress.send(format!(
            "pulled {} ({}): {} layers fetched, {} shared",
            stored.reference, stored.digest, done.fetched, done.shared
        ));
        let config = &stored.config;
        if config.entrypoint.is_empty() && config.cmd.is_empty() {
            return Err(invalid(format!(
                "{} says nothing to run (no Entrypoint and no Cmd); nothing was deployed",
                image.reference
            )));
        }
        let port = image.port.or_else(|| first_tcp_port(&config.exposed_ports));
        let made = ImageDeployment {
            reference: stored.reference.clone(),
            digest: stored.digest.clone(),
            entrypoint: config.entrypoint.clone(),
            cmd: config.cmd.clone(),
            env: config.env.clone(),
            working_dir: config.working_dir.clone().filter(|d| !d.is_empty()),
            port,
            user: config.user.clone().filter(|u| !u.is_empty()),
        };
        let (dest, layers) = (g.paths.deployment(id), Self::root_layers(g, id));
        let json = serde_json::to_vec_pretty(&made).map_err(internal)?;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // what a node that stopped half-way through left
            state::remove_tree(&dest)?;
            state::remove_tree(&layers)?;
            std::fs::create_dir_all(&dest)?;
            std::fs::write(dest.join(IMAGE_FILE), json)?;
            // the upper layer is reached through the overlay only
            std::fs::create_dir_all(&layers)?;
            set_mode(&layers, 0o700).map_err(std::io::Error::other)?;
            for dir in ["upper", "work"] {
                std::fs::create_dir(layers.join(dir))?;
            }
            set_mode(&layers.join("upper"), 0o755).map_err(std::io::Error::other)?;
            Ok(())
        })
        .await
        .map_err(internal)?
        .map_err(|e| internal(format!("cannot make deployment {id}: {e}")))?;
        Ok((stored.digest, port))
    }

    /// Mounts deployment `id`'s root unless it is mounted; `None` when the deployment does not
    /// run an image.
    pub(super) fn image_root(&self, g: &Gear, id: u32) -> Result<Option<PathBuf>, String> {
        let r = g.record();
        let Some(digest) = r
            .deployments
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.image.clone())
        else {
            return Ok(None);
        };
        let target = self.root_mount_point(g, id);
        if overlay::is_overlay_mount(&target) {
            return Ok(Some(target));
        }
        let image = self.images.image(&digest).ok_or_else(|| {
            format!(
                "the image {digest} of deployment {id} is no longer in the node's store; \
                 deploy it again with `gear deploy {} REF`",
                r.name
            )
        })?;
        let lower = self.images.lower_dirs(&image)?;
        let roots = self.config.state_dir.join("roots");
        self.roots_private.get_or_init(|| {
            // overlays mounted below stay in the node's mount namespace only
            if let Err(e) = overlay::make_private_mount_point(&roots) {
                tracing::warn!(error = %e, "the roots directory could not be made private");
            }
        });
        std::fs::create_dir_all(&target)
            .and_then(|()| set_mode(&target, 0o700).map_err(std::io::Error::other))
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        let layers = Self::root_layers(g, id);
        for dir in ["upper", "work"] {
            std::fs::create_dir_all(layers.join(dir))
                .map_err(|e| format!("cannot create the root's {dir} layer: {e}"))?;
        }
        let context = if gearhost_sandbox::selinux::is_enabled() {
            Some(
                gearhost_sandbox::selinux::gear_contexts(None, r.uid)
                    .map_err(|e| e.to_string())?
                    .file,
            )
        } else {
            None
        };
        overlay::mount_overlay(
            &overlay::OverlayRoot {
                lower,
                upper: layers.join("upper"),
                work: layers.join("work"),
                context,
            },
            &target,
        )
        .map_err(|e| format!("cannot mount the root of deployment {id}: {e}"))?;
        Ok(Some(target))
    }

    /// Unmounts deployment `id`'s root and removes its upper layer.
    pub(super) fn remove_image_root(&self, g: &Gear, id: u32) {
        let target = self.root_mount_point(g, id);
        if let Err(e) = overlay::unmount(&target) {
            tracing::warn!(error = %e, "an image root stays mounted");
            return;
        }
        let _ = std::fs::remove_dir(&target);
        let _ = state::remove_tree(&Self::root_layers(g, id));
    }

    /// Unmounts every root of gear `g` (it is destroyed).
    pub(super) fn remove_image_roots(&self, g: &Gear) {
        for d in g.record().deployments.iter().filter(|d| d.image.is_some()) {
            self.remove_image_root(g, d.id);
        }
    }

    /// The image digests some gear's deployment runs: the store keeps them.
    pub(crate) fn images_in_use(&self) -> Vec<String> {
        self.gears_snapshot()
            .iter()
            .flat_map(|g| {
                g.record()
                    .deployments
                    .iter()
                    .filter_map(|d| d.image.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes the images no gear uses any more, unless a pull or a collection is under way
    /// (the next one collects them).
    pub(super) fn collect_images_soon(&self) {
        let Ok(gc) = self.images_gc.clone().try_write_owned() else {
            return;
        };
        let keep = self.images_in_use();
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || {
            let (images, layers) = images.collect(&keep);
            drop(gc);
            if images + layers > 0 {
                tracing::info!(images, layers, "removed images no gear uses");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_tcp_port_is_the_http_port() {
        let ports =
            |p: &[&str]| first_tcp_port(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(ports(&["8080/tcp"]), Some(8080));
        assert_eq!(ports(&["53/udp", "80/tcp"]), Some(80));
        assert_eq!(ports(&["3000"]), Some(3000));
        assert_eq!(ports(&["0/tcp", "x/tcp"]), None);
        assert_eq!(ports(&[]), None);
    }

    #[test]
    fn the_image_path_comes_from_its_env() {
        let env = vec!["A=1".to_string(), "PATH=/opt/bin:/bin".to_string()];
        assert_eq!(image_path(&env), Some("/opt/bin:/bin"));
        assert_eq!(image_path(&[]), None);
    }
}
