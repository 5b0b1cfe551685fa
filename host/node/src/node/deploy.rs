//! Deployments: unpack the sources a client streams, build them with the cartridge,
//! activate them and restart onto them (rolling back to the previous one when the new one
//! does not start), prune old ones, list them and roll back on request.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use gearhost_runtime::{Cartridge, HookCall};

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::state::{self, Deployment, DeploymentState, Desired, GearState};
use crate::unpack;

impl Node {
    /// Deploy the sources the client streams as a tar archive on `archive`
    /// (`source` only labels them): a new deployment, unpacked under the
    /// rules of [`crate::unpack`] and owned by the gear's user, built,
    /// activated, and the gear restarted. A refused archive leaves no
    /// deployment behind.
    pub async fn deploy(
        &self,
        gear: &GearRef,
        source: &str,
        archive: OwnedFd,
        progress: &Progress,
    ) -> ApiResult<reply::Deployed> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let cart = self.cartridge(&g.record().cartridge)?;
        let id = g.record().next_deployment;
        let dest = g.paths.deployment(id);
        let _ = progress.send(format!("unpacking {source} into deployment {id}"));
        let uid = g.record().uid;
        let limits = unpack::Limits {
            max_bytes: self.config.max_deploy_size,
            max_entries: unpack::MAX_ENTRIES,
        };
        let dst = dest.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            // a directory left by a node that stopped half-way through
            state::remove_tree(&dst).map_err(|e| {
                unpack::UnpackError::Archive(format!("cannot clear {}: {e}", dst.display()))
            })?;
            let input = unpack::PatientReader::new(archive, unpack::IDLE_TIMEOUT);
            unpack::unpack(input, &dst, limits, Some(uid))
        })
        .await
        .map_err(internal)?;
        match unpacked {
            Ok(done) => {
                let _ = progress.send(format!(
                    "unpacked {} entries, {} bytes",
                    done.entries, done.bytes
                ));
            }
            Err(e) => {
                let _ = state::remove_tree(&dest);
                return Err(invalid(format!(
                    "the sources were refused, nothing was deployed: {e}"
                )));
            }
        }
        g.update(&self.config, |r| {
            r.next_deployment = id + 1;
            r.deployments.push(Deployment {
                id,
                created: state::now(),
                source: source.to_string(),
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
