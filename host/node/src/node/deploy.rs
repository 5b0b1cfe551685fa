//! Deployments: copy a source in, build it with the cartridge, activate it
//! and restart onto it (rolling back to the previous one when the new one
//! does not start), prune old ones, list them and roll back on request.

use std::path::Path;
use std::sync::Arc;

use gearhost_runtime::{Cartridge, HookCall};

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::node::gears::chown_tree;
use crate::state::{self, Deployment, DeploymentState, Desired, GearState};

impl Node {
    /// Deploy `source`: a new deployment, built, activated, and the gear restarted.
    pub async fn deploy(
        &self,
        gear: &GearRef,
        source: &Path,
        progress: &Progress,
    ) -> ApiResult<reply::Deployed> {
        let meta = std::fs::metadata(source).map_err(|e| {
            invalid(format!(
                "cannot read the source directory {}: {e}; give a directory the node can read",
                source.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(invalid(format!(
                "{} is not a directory; deploy a directory of sources",
                source.display()
            )));
        }
        std::fs::read_dir(source)
            .map_err(|e| invalid(format!("cannot list {}: {e}", source.display())))?;
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let cart = self.cartridge(&g.record().cartridge)?;
        let id = g.record().next_deployment;
        let dest = g.paths.deployment(id);
        let _ = progress.send(format!("copying {} into deployment {id}", source.display()));
        let uid = g.record().uid;
        let (src, dst) = (source.to_path_buf(), dest.clone());
        let copied = tokio::task::spawn_blocking(move || {
            copy_tree(&src, &dst).and_then(|()| chown_tree(&dst, uid))
        })
        .await
        .map_err(internal)?;
        if let Err(e) = copied {
            let _ = state::remove_tree(&dest);
            return Err(invalid(format!("cannot copy {}: {e}", source.display())));
        }
        g.update(&self.config, |r| {
            r.next_deployment = id + 1;
            r.deployments.push(Deployment {
                id,
                created: state::now(),
                source: source.display().to_string(),
                state: DeploymentState::Pending,
                error: None,
            });
        })?;
        let _ = progress.send(format!("building deployment {id}"));
        let previous = g.record().active;
        let was_running = g.record().desired == Desired::Running;
        let build = self
            .hook_with_repo(&g, &cart, HookCall::Build, Some(id))
            .await;
        if let Err(e) = build {
            g.update(&self.config, |r| {
                if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                    d.state = DeploymentState::Failed;
                    d.error = Some(e.message.clone());
                }
            })?;
            let keep =
                previous.map_or(String::new(), |p| format!("; deployment {p} keeps serving"));
            return Err(failed(format!(
                "build of deployment {id} failed: {}{keep}; see `gear logs {} --hooks`",
                e.message, gear.name
            )));
        }
        g.update(&self.config, |r| {
            if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                d.state = DeploymentState::Ready;
            }
        })?;
        if let Err(e) = self
            .activate(&g, &cart, id, was_running || previous.is_none(), progress)
            .await
        {
            return Err(self
                .roll_back_failed_start(&g, id, previous.filter(|_| was_running), e, progress)
                .await);
        }
        self.prune(&g);
        let r = g.record();
        Ok(reply::Deployed {
            deployment: id,
            state: r.state,
            url: self.url(&r),
        })
    }

    /// Deployment `id` was built but did not start: mark it failed and, when
    /// `previous` was serving before, activate and start it again. Returns
    /// the error to report.
    pub(super) async fn roll_back_failed_start(
        &self,
        g: &Arc<Gear>,
        id: u32,
        previous: Option<u32>,
        error: ApiError,
        progress: &Progress,
    ) -> ApiError {
        let name = g.record().name;
        let _ = g.update(&self.config, |r| {
            if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                d.state = DeploymentState::Failed;
                d.error = Some(error.message.clone());
            }
        });
        let Some(previous) = previous else {
            return failed(format!("deployment {id} did not start: {}", error.message));
        };
        let _ = progress.send(format!(
            "deployment {id} did not start; going back to deployment {previous}"
        ));
        if let Err(e) = g.update(&self.config, |r| r.active = Some(previous)) {
            return failed(format!(
                "deployment {id} did not start: {}; going back to deployment {previous} failed: {}",
                error.message, e.message
            ));
        }
        match self.start_locked(g, progress).await {
            Ok(()) => failed(format!(
                "deployment {id} did not start: {}; deployment {previous} is serving again \
                 (see `gear logs {name}`)",
                error.message
            )),
            Err(e) => failed(format!(
                "deployment {id} did not start: {}; deployment {previous} did not start \
                 again either: {}",
                error.message, e.message
            )),
        }
    }

    pub(super) async fn activate(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        id: u32,
        start: bool,
        progress: &Progress,
    ) -> ApiResult<()> {
        if g.supervisor.any_running() || g.record().state == GearState::Running {
            let _ = progress.send("stopping the running deployment".into());
            self.stop_locked(g, cart).await?;
        }
        g.update(&self.config, |r| r.active = Some(id))?;
        if start {
            let _ = progress.send(format!("starting deployment {id}"));
            self.start_locked(g, progress).await?;
        }
        Ok(())
    }

    pub(super) fn prune(&self, g: &Gear) {
        let keep = self.config.keep_deployments;
        let r = g.record();
        if r.deployments.len() <= keep {
            return;
        }
        let excess = r.deployments.len() - keep;
        let drop: Vec<u32> = r
            .deployments
            .iter()
            .filter(|d| Some(d.id) != r.active)
            .take(excess)
            .map(|d| d.id)
            .collect();
        if g.update(&self.config, |r| {
            r.deployments.retain(|d| !drop.contains(&d.id))
        })
        .is_ok()
        {
            for id in drop {
                let _ = state::remove_tree(&g.paths.deployment(id));
            }
        }
    }

    /// Run the build hook on the active deployment.
    pub async fn build(&self, gear: &GearRef) -> ApiResult<reply::Built> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let active = r.active.ok_or_else(|| {
            invalid(format!(
                "gear {} has nothing deployed; run `gear deploy {} DIR`",
                r.name, r.name
            ))
        })?;
        let cart = self.cartridge(&r.cartridge)?;
        self.hook_with_repo(&g, &cart, HookCall::Build, Some(active))
            .await?;
        Ok(reply::Built { built: active })
    }

    /// Deployment history.
    pub fn deployments(&self, gear: &GearRef) -> ApiResult<reply::DeploymentList> {
        let r = self.find(gear)?.record();
        Ok(reply::DeploymentList {
            active: r.active,
            deployments: r.deployments,
        })
    }

    /// Activate an earlier deployment and restart onto it.
    pub async fn rollback(
        &self,
        gear: &GearRef,
        id: Option<u32>,
        progress: &Progress,
    ) -> ApiResult<reply::RolledBack> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let active = r
            .active
            .ok_or_else(|| invalid("nothing is deployed, so there is nothing to roll back to"))?;
        let target = match id {
            Some(id) => r.deployments.iter().find(|d| d.id == id).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("no deployment {id}; see `gear deployments {}`", r.name),
                )
            })?,
            None => r
                .deployments
                .iter()
                .rev()
                .find(|d| d.id < active && d.state == DeploymentState::Ready)
                .ok_or_else(|| {
                    invalid("there is no earlier successful deployment to roll back to")
                })?,
        };
        if target.state != DeploymentState::Ready {
            return Err(invalid(format!(
                "deployment {} did not build successfully; pick another",
                target.id
            )));
        }
        let target = target.id;
        let cart = self.cartridge(&r.cartridge)?;
        let start = r.desired == Desired::Running;
        self.activate(&g, &cart, target, start, progress).await?;
        Ok(reply::RolledBack { active: target })
    }
}

/// Copy a source tree without following symlinks (they are copied as links).
pub(super) fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    copy_tree_below(src, dst, 0)
}

/// How deep a deployed source may nest directories (the copy recurses).
pub(super) const MAX_SOURCE_DEPTH: usize = 128;

pub(super) fn copy_tree_below(src: &Path, dst: &Path, depth: usize) -> std::io::Result<()> {
    if depth > MAX_SOURCE_DEPTH {
        return Err(std::io::Error::other(format!(
            "{} is nested more than {MAX_SOURCE_DEPTH} directories deep; deploy a shallower tree",
            src.display()
        )));
    }
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            copy_tree_below(&entry.path(), &to, depth + 1)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_copied_with_its_links_as_links_and_never_followed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("static/css")).expect("dirs");
        std::fs::write(src.join("static/css/site.css"), "body{}").expect("file");
        std::fs::write(src.join("app.py"), "print(1)").expect("file");
        // a link a user may deploy on purpose, and one that would read the host's files
        std::os::unix::fs::symlink("app.py", src.join("main.py")).expect("link");
        std::os::unix::fs::symlink("/etc", src.join("host-etc")).expect("link");
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).expect("copied");
        assert_eq!(
            std::fs::read_to_string(dst.join("static/css/site.css")).expect("copied file"),
            "body{}"
        );
        for (link, target) in [("main.py", "app.py"), ("host-etc", "/etc")] {
            let meta = std::fs::symlink_metadata(dst.join(link)).expect("link copied");
            assert!(meta.file_type().is_symlink(), "{link} stays a link");
            assert_eq!(
                std::fs::read_link(dst.join(link)).expect("target"),
                Path::new(target)
            );
        }
    }

    #[test]
    fn a_source_nested_too_deep_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut deep = dir.path().join("src");
        for _ in 0..=MAX_SOURCE_DEPTH + 1 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("deep tree");
        let e = copy_tree(&dir.path().join("src"), &dir.path().join("dst")).expect_err("too deep");
        assert!(e.to_string().contains("deploy a shallower tree"), "{e}");
    }
}
