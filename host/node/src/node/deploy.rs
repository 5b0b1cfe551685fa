//! Deployments: unpack the sources a client streams, build them with the cartridge,
//! activate them and restart onto them (rolling back to the previous one when the new one
//! does not start), prune old ones, list them and roll back on request.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use gearhost_runtime::{Cartridge, HookCall};

use super::*;
use crate::api::reply::{self, NodeEventKind};
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::state::{self, Deployment, DeploymentState, Desired, GearState};
use crate::unpack;

/// How many failed deployments a gear keeps for inspection (`gear
/// deployments`, `gear logs --hooks`), apart from the `keep-deployments`
/// good ones: failures never take a rollback slot.
pub const KEEP_FAILED: usize = 3;

/// Which deployments to drop so that at most `keep` good (built) ones and
/// `keep_failed` failed ones remain, oldest first within each kind. The
/// active deployment always stays (and counts as a good one), and so does
/// one still being built.
pub fn prune_choice(
    deployments: &[Deployment],
    active: Option<u32>,
    keep: usize,
    keep_failed: usize,
) -> Vec<u32> {
    let keep = keep.max(1);
    let mut drop = Vec::new();
    let failed: Vec<u32> = deployments
        .iter()
        .filter(|d| d.state == DeploymentState::Failed && Some(d.id) != active)
        .map(|d| d.id)
        .collect();
    drop.extend(failed.iter().take(failed.len().saturating_sub(keep_failed)));
    let good = deployments
        .iter()
        .filter(|d| d.state == DeploymentState::Ready || Some(d.id) == active)
        .count();
    drop.extend(
        deployments
            .iter()
            .filter(|d| d.state == DeploymentState::Ready && Some(d.id) != active)
            .take(good.saturating_sub(keep))
            .map(|d| d.id),
    );
    drop.sort_unstable();
    drop
}

/// What a deployment is made of.
pub enum Content {
    /// A tar archive of sources, streamed by the client.
    Archive(OwnedFd),
    /// A container image, for a gear of the `image` cartridge.
    Image(super::image_gears::ImageSource),
}

/// A deploy that `gear deploy --cancel` may cancel, until it is finished
/// (or dropped).
struct Deploying<'a> {
    gear: &'a Gear,
    cancel: gearhost_runtime::Cancel,
}

impl<'a> Deploying<'a> {
    fn start(gear: &'a Gear, id: u32) -> Deploying<'a> {
        let cancel = gearhost_runtime::Cancel::new();
        *lock(&gear.deploying) = Some((id, cancel.clone()));
        Deploying { gear, cancel }
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// From now on nothing is cancelled any more.
    fn finish(&self) {
        *lock(&self.gear.deploying) = None;
    }
}

impl Drop for Deploying<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

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
        self.deploy_content(gear, source, Content::Archive(archive), progress)
            .await
    }

    /// Deploy `content`: sources or an image (see [`Node::deploy`]).
    pub(super) async fn deploy_content(
        &self,
        gear: &GearRef,
        source: &str,
        content: Content,
        progress: &Progress,
    ) -> ApiResult<reply::Deployed> {
        let g = self.find(gear)?;
        let _op = match g.op.try_lock() {
            Ok(held) => held,
            Err(_) => {
                // the caller hears why nothing happens yet
                let what = match lock(&g.deploying).as_ref() {
                    Some((id, _)) => format!(
                        "the deploy of deployment {id} in progress (cancel it with \
                         `gear deploy {} --cancel`)",
                        gear.name
                    ),
                    None => "the operation in progress on the gear".to_string(),
                };
                let _ = progress.send(format!("waiting for {what} to finish"));
                tokio::select! {
                    held = g.op.lock() => held,
                    // a deploy whose caller left before it started never starts
                    () = progress.gone() => {
                        return Err(failed(
                            "the caller went away while the deploy waited to start; nothing \
                             was deployed",
                        ));
                    }
                }
            }
        };
        let _watch = g.hook_log.watch(progress);
        let cart = self.cartridge(&g.record().cartridge)?;
        if !cart.manifest().deploy.accepts {
            let r = g.record();
            return Err(invalid(format!(
                "gear {} runs {}, which takes no deployments: it serves what its cartridge \
                 brings; start it with `gear start {}` and reach it from an app with \
                 `gear link APP {}`",
                r.name, r.cartridge, r.name, r.name
            )));
        }
        let runs_images = cart.manifest().name == super::image_gears::IMAGE_CARTRIDGE;
        match (&content, runs_images) {
            (Content::Archive(_), true) => {
                return Err(invalid(format!(
                    "gear {} runs container images: deploy one with `gear deploy {} \
                     REGISTRY/REPOSITORY:TAG`",
                    gear.name, gear.name
                )));
            }
            (Content::Image(_), false) => {
                return Err(invalid(format!(
                    "gear {} runs the {} cartridge, which deploys sources, not images; \
                     create a gear for the image with `gear create NAME --image REF`",
                    gear.name,
                    g.record().cartridge
                )));
            }
            _ => {}
        }
        let id = g.record().next_deployment;
        let dest = g.paths.deployment(id);
        // from here until the new deployment serves (or the old one is back),
        // `gear deploy --cancel` ends the deploy's hooks
        let cancel = Deploying::start(&g, id);
        let archive = match content {
            Content::Archive(archive) => archive,
            Content::Image(image) => {
                let made = self.image_deployment(&g, id, &image, progress).await;
                if made.is_ok() && cancel.is_cancelled() {
                    let _ = state::remove_tree(&dest);
                    let message = format!(
                        "the deploy of deployment {id} was cancelled before its build; nothing \
                         was deployed"
                    );
                    self.event(&g, NodeEventKind::DeployCancelled, &message, Some(id));
                    return Err(failed(message));
                }
                let (digest, port) = made?;
                return self
                    .build_and_activate(
                        &g,
                        &cart,
                        gear,
                        id,
                        source,
                        (Some(digest), port),
                        cancel,
                        progress,
                    )
                    .await;
            }
        };
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
        if unpacked.is_ok() && cancel.is_cancelled() {
            let _ = state::remove_tree(&dest);
            let message = format!(
                "the deploy of deployment {id} was cancelled before its build; nothing was deployed"
            );
            self.event(&g, NodeEventKind::DeployCancelled, &message, Some(id));
            return Err(failed(message));
        }
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
        self.build_and_activate(&g, &cart, gear, id, source, (None, None), cancel, progress)
            .await
    }

    /// Records deployment `id` (made in its directory), builds it, activates it and restarts
    /// the gear onto it, or rolls back.
    #[allow(clippy::too_many_arguments)]
    async fn build_and_activate(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        gear: &GearRef,
        id: u32,
        source: &str,
        (image, port): (Option<String>, Option<u16>),
        cancel: Deploying<'_>,
        progress: &Progress,
    ) -> ApiResult<reply::Deployed> {
        let (g, cart) = (g.clone(), cart.clone());
        g.update(&self.config, |r| {
            r.next_deployment = id + 1;
            r.deployments.push(Deployment {
                id,
                created: state::now(),
                source: source.to_string(),
                state: DeploymentState::Pending,
                error: None,
                image: image.clone(),
                port,
            });
        })?;
        let previous = g.record().active;
        self.event(
            &g,
            NodeEventKind::DeployStarted,
            &format!("deploying {source}"),
            Some(id),
        );
        let _ = progress.send(format!("building deployment {id}"));
        let was_running = g.record().desired == Desired::Running;
        let build = self
            .hook_with_repo(&g, &cart, HookCall::Build, Some(id))
            .await;
        let build = match build {
            Ok(_) if cancel.is_cancelled() => Err(failed("cancelled")),
            other => other,
        };
        if let Err(e) = build {
            // what restores the serving deployment is not cancelled
            cancel.finish();
            let cancelled = cancel.is_cancelled();
            let error = if cancelled {
                "cancelled".to_string()
            } else {
                e.message.clone()
            };
            g.update(&self.config, |r| {
                if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                    d.state = DeploymentState::Failed;
                    d.error = Some(error.clone());
                }
            })?;
            self.prune(&g);
            // the failed build may have replaced what the serving deployment's
            // build made outside its directory: build that one again, so its
            // next start (a restart, a crash, the node's) runs its own release
            let keep = match previous {
                None => String::new(),
                Some(p) => {
                    let _ =
                        progress.send(format!("rebuilding deployment {p}, which keeps serving"));
                    match self
                        .hook_with_repo(&g, &cart, HookCall::Build, Some(p))
                        .await
                    {
                        Ok(_) => format!("; deployment {p} keeps serving"),
                        Err(again) => format!(
                            "; deployment {p} keeps serving, but building it again failed \
                             too ({}): run `gear build {}` before it restarts",
                            again.message, gear.name
                        ),
                    }
                }
            };
            let (kind, message) = if cancelled {
                (
                    NodeEventKind::DeployCancelled,
                    format!("the deploy of deployment {id} was cancelled during its build{keep}"),
                )
            } else {
                (
                    NodeEventKind::DeployFailed,
                    format!(
                        "build of deployment {id} failed: {}{keep}; see `gear logs {} --hooks`",
                        e.message, gear.name
                    ),
                )
            };
            self.event(&g, kind, &message, Some(id));
            return Err(failed(message));
        }
        g.update(&self.config, |r| {
            if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                d.state = DeploymentState::Ready;
            }
        })?;
        let held = Held::new(self, &g);
        if let Err(e) = self
            .activate(
                &g,
                &cart,
                id,
                was_running || previous.is_none(),
                &held,
                progress,
            )
            .await
        {
            cancel.finish();
            let (kind, e) = if cancel.is_cancelled() {
                (
                    NodeEventKind::DeployCancelled,
                    failed(format!("cancelled while it started ({})", e.message)),
                )
            } else {
                (NodeEventKind::DeployFailed, e)
            };
            let e = self
                .roll_back_failed_start(
                    &g,
                    &cart,
                    id,
                    previous.filter(|_| was_running),
                    e,
                    progress,
                )
                .await;
            self.event(&g, kind, &e.message, Some(id));
            self.prune(&g);
            return Err(e);
        }
        cancel.finish();
        if cancel.is_cancelled() {
            // the cancel came while the new deployment's app was coming up,
            // outside any hook: it serves now, and stays
            let _ = progress.send(format!(
                "the cancel came after deployment {id} had started; it stays active \
                 (`gear rollback {}` goes back)",
                gear.name
            ));
        }
        self.prune(&g);
        let r = g.record();
        self.event(
            &g,
            NodeEventKind::DeployDone,
            &format!("deployment {id} is active ({})", r.state),
            Some(id),
        );
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
        cart: &Cartridge,
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
        // the failed deployment's build replaced what the cartridge keeps
        // outside the deployment (a rendered configuration, a virtualenv)
        if let Err(e) = self
            .hook_with_repo(g, cart, HookCall::Build, Some(previous))
            .await
        {
            return failed(format!(
                "deployment {id} did not start: {}; rebuilding deployment {previous} to go \
                 back to it failed: {}; see `gear logs {name} --hooks`",
                error.message, e.message
            ));
        }
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

    /// Make deployment `id` the active one and, when `start`, serve it: a
    /// running app is replaced without dropping a request (requests wait in
    /// `held` when it restarts in place), a stopped gear is started.
    pub(super) async fn activate(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        id: u32,
        start: bool,
        held: &Held<'_>,
        progress: &Progress,
    ) -> ApiResult<()> {
        // a deployment may name another port (an image's): the routes follow it
        let port = self.http_port(&g.record());
        let done = self.activate_onto(g, cart, id, start, held, progress).await;
        if self.http_port(&g.record()) != port {
            self.update_routes(g);
        }
        done
    }

    async fn activate_onto(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        id: u32,
        start: bool,
        held: &Held<'_>,
        progress: &Progress,
    ) -> ApiResult<()> {
        // a frozen app is replaced as a running one
        self.awake(g, "a deployment is activated").await?;
        let running = g.record().state == GearState::Running;
        if start && running {
            return self.replace(g, cart, id, held, progress).await;
        }
        if g.supervisor.any_running() || running {
            held.begin().await;
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

    /// Drop the deployments [`prune_choice`] picks, records first, then
    /// their directories.
    pub(super) fn prune(&self, g: &Gear) {
        let r = g.record();
        let drop = prune_choice(
            &r.deployments,
            r.active,
            self.config.keep_deployments,
            KEEP_FAILED,
        );
        if drop.is_empty() {
            return;
        }
        if g.update(&self.config, |r| {
            r.deployments.retain(|d| !drop.contains(&d.id))
        })
        .is_ok()
        {
            let images = r.deployments.iter().any(|d| d.image.is_some());
            for id in drop {
                if images {
                    self.remove_image_root(g, id);
                }
                let _ = state::remove_tree(&g.paths.deployment(id));
            }
            if images {
                self.collect_images_soon();
            }
        }
    }

    /// Run the build hook on the active deployment.
    pub async fn build(&self, gear: &GearRef, progress: &Progress) -> ApiResult<reply::Built> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let _watch = g.hook_log.watch(progress);
        let r = g.record();
        let cart = self.cartridge(&r.cartridge)?;
        if !cart.manifest().deploy.accepts {
            return Err(invalid(format!(
                "gear {} runs {}, which takes no deployments: there is nothing to build",
                r.name, r.cartridge
            )));
        }
        let active = r.active.ok_or_else(|| {
            invalid(format!(
                "gear {} has nothing deployed; run `gear deploy {} DIR`",
                r.name, r.name
            ))
        })?;
        self.hook_with_repo(&g, &cart, HookCall::Build, Some(active))
            .await?;
        Ok(reply::Built { built: active })
    }

    /// Cancel the deploy in progress on the gear (only if it is deployment
    /// `only`, when given): its hooks end, and the deploy restores the
    /// deployment that served before.
    pub fn deploy_cancel(
        &self,
        gear: &GearRef,
        only: Option<u32>,
    ) -> ApiResult<reply::DeployCancelled> {
        let g = self.find(gear)?;
        let deploying = lock(&g.deploying);
        match (deploying.as_ref(), only) {
            (Some((id, cancel)), None) => {
                cancel.cancel(format!("the deploy of deployment {id} was cancelled"));
                Ok(reply::DeployCancelled { deployment: *id })
            }
            (Some((id, cancel)), Some(only)) if *id == only => {
                cancel.cancel(format!("the deploy of deployment {id} was cancelled"));
                Ok(reply::DeployCancelled { deployment: *id })
            }
            (Some((id, _)), Some(only)) => Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "deployment {only} of gear {} is not being deployed (deployment {id} is); \
                     nothing was cancelled",
                    gear.name
                ),
            )),
            (None, _) => Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "no deploy is in progress on gear {}; nothing was cancelled (see `gear \
                     deployments {}`)",
                    gear.name, gear.name
                ),
            )),
        }
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
        let held = Held::new(self, &g);
        let _watch = g.hook_log.watch(progress);
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
        // what the target's build produced outside its directory (a rendered
        // configuration, a virtualenv) was replaced by later builds: build it
        // again, while the active deployment keeps serving, so a failure
        // leaves everything as it was
        let _ = progress.send(format!("rebuilding deployment {target}"));
        self.hook_with_repo(&g, &cart, HookCall::Build, Some(target))
            .await
            .map_err(|e| {
                failed(format!(
                    "rebuilding deployment {target} failed, deployment {active} keeps serving: \
                     {}; see `gear logs {} --hooks`",
                    e.message, r.name
                ))
            })?;
        self.activate(&g, &cart, target, start, &held, progress)
            .await?;
        self.event(
            &g,
            NodeEventKind::RolledBack,
            &format!("rolled back from deployment {active} to deployment {target}"),
            Some(target),
        );
        Ok(reply::RolledBack { active: target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(states: &[(u32, DeploymentState)]) -> Vec<Deployment> {
        states
            .iter()
            .map(|&(id, state)| Deployment {
                id,
                created: u64::from(id),
                source: format!("src{id}"),
                state,
                error: None,
                image: None,
                port: None,
            })
            .collect()
    }

    use DeploymentState::{Failed as F, Pending as P, Ready as R};

    #[test]
    fn failures_never_take_a_good_deployments_slot() {
        // two good deployments, then four failed builds: both good ones stay,
        // and only the newest failures are kept apart
        let d = history(&[(1, R), (2, R), (3, F), (4, F), (5, F), (6, F)]);
        assert_eq!(prune_choice(&d, Some(2), 2, 3), vec![3]);
        assert_eq!(prune_choice(&d, Some(2), 5, 1), vec![3, 4, 5]);
        assert_eq!(prune_choice(&d, Some(2), 5, 0), vec![3, 4, 5, 6]);
    }

    #[test]
    fn the_oldest_good_deployments_go_first_and_the_active_one_stays() {
        let d = history(&[(1, R), (2, R), (3, F), (4, R), (5, R)]);
        assert_eq!(prune_choice(&d, Some(5), 2, 3), vec![1, 2]);
        // rolled back to the oldest: it stays and counts as one of the kept
        assert_eq!(prune_choice(&d, Some(1), 2, 3), vec![2, 4]);
        assert!(prune_choice(&d, Some(5), 4, 3).is_empty());
    }

    #[test]
    fn an_active_deployment_that_failed_later_stays_and_counts_as_good() {
        // 3 built, was activated, then marked failed when it did not start
        // while nothing else could serve: it is still what the gear runs
        let d = history(&[(1, F), (2, F), (3, F)]);
        assert_eq!(prune_choice(&d, Some(3), 1, 1), vec![1]);
    }

    #[test]
    fn a_deployment_being_built_is_never_dropped() {
        let d = history(&[(1, R), (2, R), (3, P)]);
        assert_eq!(prune_choice(&d, Some(2), 1, 0), vec![1]);
    }
}
