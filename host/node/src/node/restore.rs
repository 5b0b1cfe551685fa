//! Restores (`gear restore`): a gear brought back from an archive of
//! [`super::snapshot`], created when it does not exist, else with its
//! deployments, data and environment replaced.
//!
//! The archive is hostile input. `snapshot.json` comes first and is checked
//! before anything changes (format, cartridge installed, images in the
//! store, environment); the rest is unpacked under the rules of
//! [`crate::unpack`] into staging directories beside what they replace
//! (`deployments/.restore`, `home/app-root/.restore-<id>`, so that the swap
//! is a rename, within the same file system and quota). Only then is the
//! gear stopped, `pre-restore` run, the old deployments and data moved aside
//! and the new ones moved in, the record written, the active deployment
//! built again and `post-restore` run. Any failure on the way puts the old
//! ones back (or removes the gear the restore created): a restore is whole
//! or leaves the gear as it was.

use std::cell::Cell;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gearhost_runtime::{Cartridge, HookCall};
use nix::fcntl::{OFlag, renameat};
use nix::sys::stat::{Mode, mkdirat};

use super::gears::{check_gear_ref, new_id};
use super::snapshot::{
    IDLE, MAX_BYTES, MAX_ENTRIES, MAX_META, META, Meta, is_not_found, one_fd, open_dir_beneath,
};
use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::state::{self, Desired, GearRecord, GearState};
use crate::unpack::{self, Route, Rules, UnpackError, refuse};

mod staging;
use staging::{Go, Reader, STAGED_DEPLOYMENTS, Stage, Staged, off_thread, stage};

impl Node {
    /// Restore `gear` from the archive the client writes on the pipe `fds`
    /// holds (`source` labels it), creating the gear (for `owner`) when it
    /// does not exist.
    pub async fn restore(
        self: &Arc<Self>,
        gear: &GearRef,
        source: &str,
        fds: Vec<OwnedFd>,
        owner: Option<&Owner>,
        progress: &Progress,
    ) -> ApiResult<reply::Restored> {
        // a gear lost with its node (it held data) comes back here, under its id and uid
        if let Some(lost) = self.lost_placement(gear).await {
            return self
                .restore_lost(&lost, gear, (source, fds), owner, progress)
                .await;
        }
        self.restore_arriving(gear, source, fds, owner, progress, None)
            .await
            .map(|(restored, _)| restored)
    }

    /// [`Node::restore`], or for a gear `arriving` from another node (a
    /// move): a new gear under its id and uid, which must not exist here.
    /// Also returns the gear.
    pub(crate) async fn restore_arriving(
        self: &Arc<Self>,
        gear: &GearRef,
        source: &str,
        fds: Vec<OwnedFd>,
        owner: Option<&Owner>,
        progress: &Progress,
        arriving: Option<&Arrival>,
    ) -> ApiResult<(reply::Restored, Arc<Gear>)> {
        let input = one_fd(
            fds,
            "restore",
            "the read end of the pipe the client writes the archive on",
        )?;
        check_gear_ref(gear)?;
        let (meta_tx, meta_rx) = tokio::sync::oneshot::channel::<Meta>();
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<Result<Stage, String>>(1);
        let reader = tokio::task::spawn_blocking(move || read_archive(input, meta_tx, go_rx));
        let refused = |e: &dyn std::fmt::Display| {
            invalid(format!(
                "the archive {source} was refused, nothing was restored: {e}"
            ))
        };
        let Ok(meta) = meta_rx.await else {
            return Err(match reader.await {
                Ok(Err(e)) => refused(&e),
                Ok(Ok(_)) => refused(&format!("it holds no {META}")),
                Err(e) => internal(e),
            });
        };
        let _ = progress.send(format!(
            "the archive holds gear {} ({}, uid {}) of {}, deployments {:?}",
            meta.name,
            meta.cartridge,
            meta.uid,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(meta.taken)
            ),
            meta.deployments.iter().map(|d| d.id).collect::<Vec<_>>()
        ));
        // images a restored deployment runs stay in the store until its record names them
        let _images = self.images_gc.clone().read_owned().await;
        let give_up = |e: ApiError| {
            let _ = go_tx.send(Err(e.message.clone()));
            e
        };
        let existing = match self.find(gear) {
            Ok(g) => Some(g),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(give_up(e)),
        };
        if let (Some(a), Some(_)) = (arriving, &existing) {
            let e = give_up(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} already exists on this node, so the one moving from node {} cannot arrive; destroy the copy here first",
                    gear.name, a.from
                ),
            ));
            let _ = reader.await;
            return Err(e);
        }
        if let Err(e) = self.check_restorable(existing.as_ref(), &meta) {
            let e = give_up(e);
            let _ = reader.await;
            return Err(e);
        }
        let created = existing.is_none();
        let g = match existing {
            Some(g) => g,
            None => {
                let _ = progress.send(format!("creating gear {}", gear.name));
                let made = self
                    .create_with_uid(
                        gear,
                        &meta.cartridge,
                        meta.disk,
                        owner,
                        Some(arriving.and_then(|a| a.uid).unwrap_or(meta.uid)),
                        arriving,
                    )
                    .await
                    .and_then(|_| self.find(gear));
                match made {
                    Ok(g) => g,
                    Err(e) => {
                        let e = give_up(e);
                        let _ = reader.await;
                        return Err(e);
                    }
                }
            }
        };
        let op = g.op.lock().await;
        let watch = g.hook_log.watch(progress);
        let done = self
            .restore_into(&g, created, &meta, (go_tx, reader), source, progress)
            .await;
        drop(watch);
        drop(op);
        match done {
            Ok(restored) => Ok((restored, g)),
            Err(e) if created => {
                // nothing of a gear that was never restored stays
                if let Err(again) = self.destroy(gear, &Progress::discard()).await {
                    tracing::warn!(gear = %gear.name, error = %again, "cannot remove a gear whose restore failed");
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// What can be checked before anything changes: the cartridge is
    /// installed (and is the existing gear's), the images are in the store,
    /// the environment is one a user could have set.
    fn check_restorable(&self, existing: Option<&Arc<Gear>>, meta: &Meta) -> ApiResult<()> {
        self.cartridge(&meta.cartridge).map_err(|_| {
            invalid(format!(
                "the archive is of a gear of cartridge {}, which is not installed on this node; \
                 ask an operator to install it (`gear cartridge install`), then restore again",
                meta.cartridge
            ))
        })?;
        if let Some(g) = existing {
            let r = g.record();
            if r.cartridge != meta.cartridge {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "gear {} runs {}, and the archive is of a {} gear; restore it under \
                         another name, or destroy {} first",
                        r.name, r.cartridge, meta.cartridge, r.name
                    ),
                ));
            }
        }
        for d in &meta.deployments {
            if let Some(digest) = &d.image
                && self.images.image(digest).is_none()
            {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "deployment {} runs the image {} ({digest}), which is not in this node's \
                         image store; pull it first (`gear image pull {}`, an operator), then \
                         restore again",
                        d.id, d.source, d.source
                    ),
                ));
            }
        }
        for (k, v) in meta.user_env.iter().chain(&meta.cartridge_env) {
            if crate::env::is_system_key(k) {
                return Err(invalid(format!(
                    "the archive sets {k}, which the node sets itself; it was not written by \
                     `gear snapshot`"
                )));
            }
            if v.len() > 64 * 1024 || v.contains('\0') || k.contains(['\0', '=']) || k.is_empty() {
                return Err(invalid(format!(
                    "the archive's value of {k:?} is longer than 64 KiB or holds a NUL byte"
                )));
            }
        }
        for k in meta.user_env.keys() {
            crate::env::check_user_key(k).map_err(invalid)?;
        }
        for (vars, what) in [
            (&meta.user_env, "the archive's user environment"),
            (&meta.cartridge_env, "the archive's cartridge environment"),
        ] {
            let none = std::collections::BTreeMap::new();
            crate::env::check_room(
                &none,
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                what,
            )
            .map_err(invalid)?;
        }
        Ok(())
    }

    /// Unpack into staging, then swap into `g` (held), build, and run the
    /// cartridge's actions; a failure puts back what was.
    async fn restore_into(
        &self,
        g: &Arc<Gear>,
        created: bool,
        meta: &Meta,
        (go, reader): (Go, Reader),
        source: &str,
        progress: &Progress,
    ) -> ApiResult<reply::Restored> {
        let before = g.record();
        let cart = self.cartridge(&before.cartridge)?;
        let staging = match stage(&g.paths.root, before.uid, meta) {
            Ok(s) => s,
            Err(e) => {
                let _ = go.send(Err(format!("cannot make the staging directories: {e}")));
                let _ = reader.await;
                return Err(failed(format!(
                    "cannot make the staging directories in the gear's directory: {e}; nothing \
                     was restored"
                )));
            }
        };
        let (staged, stage_fds) = staging;
        let staged = Arc::new(staged);
        let _ = progress.send("unpacking the archive".into());
        let _ = go.send(Ok(stage_fds));
        let unpacked = reader.await.map_err(internal)?;
        let (entries, bytes) = match unpacked {
            Ok(done) => done,
            Err(e) => {
                staged.remove_staging();
                return Err(invalid(format!(
                    "the archive {source} was refused, nothing was restored: {e}"
                )));
            }
        };
        if let Some(missing) = meta.deployments.iter().find(|d| {
            !staged
                .deployments
                .join(STAGED_DEPLOYMENTS)
                .join(d.id.to_string())
                .is_dir()
        }) {
            staged.remove_staging();
            return Err(invalid(format!(
                "the archive {source} was refused, nothing was restored: {META} names deployment \
                 {}, which the archive does not hold",
                missing.id
            )));
        }
        let _ = progress.send(format!("unpacked {entries} entries, {bytes} bytes"));
        if let Err(e) = self.cartridge_action(g, &cart, "pre-restore").await {
            staged.remove_staging();
            return Err(ApiError::new(
                e.kind,
                format!(
                    "the cartridge's pre-restore action failed, nothing was restored: {}; see \
                     `gear logs {} --hooks`",
                    e.message, before.name
                ),
            ));
        }
        // the gear is stopped for the swap, and starts again after if it ran
        let was_running = !created
            && (matches!(
                before.state,
                GearState::Running | GearState::Starting | GearState::Frozen
            ) || g.supervisor.any_running());
        if was_running || g.supervisor.any_running() {
            let _ = progress.send(format!("stopping {}", before.name));
            if let Err(e) = self.awake(g, "the gear is restored").await {
                staged.remove_staging();
                return Err(e);
            }
            if let Err(e) = self.stop_locked(g, &cart).await {
                staged.remove_staging();
                let _ = self.start_locked(g, &Progress::discard()).await;
                return Err(failed(format!(
                    "the gear could not be stopped for the restore, nothing was restored: {}",
                    e.message
                )));
            }
        }
        self.remove_image_roots(g);
        let swapped = off_thread(&staged, Staged::swap_in).await;
        if let Err(e) = swapped {
            staged.remove_staging();
            self.put_back(g, &cart, &before, was_running).await;
            return Err(failed(format!(
                "cannot move the restored files into the gear: {e}; the gear is as it was"
            )));
        }
        let (notes, uid_kept) = self.restored_record(meta, &before);
        let next = match g.update(&self.config, |r| apply(r, meta, &notes.1)) {
            Ok(next) => next,
            Err(e) => {
                let _ = off_thread(&staged, Staged::swap_back).await;
                staged.remove_staging();
                self.put_back(g, &cart, &before, was_running).await;
                return Err(e);
            }
        };
        self.rebuild_routes();
        let finished = self.finish_restore(g, &cart, next.active, progress).await;
        if let Err(e) = finished {
            g.supervisor
                .stop_all(std::time::Duration::from_secs(10))
                .await;
            self.remove_image_roots(g);
            let back = off_thread(&staged, Staged::swap_back).await;
            staged.remove_staging();
            if let Err(again) = back {
                tracing::error!(gear = %before.label(), error = %again, "cannot put the gear's files back after a failed restore");
            }
            let _ = g.update(&self.config, |r| *r = before.clone());
            self.rebuild_routes();
            self.put_back(g, &cart, &before, was_running).await;
            return Err(e);
        }
        off_thread(&staged, |s| {
            s.remove_old();
            s.remove_staging();
            Ok(())
        })
        .await
        .ok();
        if before.deployments.iter().any(|d| d.image.is_some()) {
            self.collect_images_soon();
        }
        let mut notes = notes.0;
        if was_running {
            let _ = progress.send(format!("starting {} again", before.name));
            if let Err(e) = self.start_locked(g, progress).await {
                notes.push(format!(
                    "the gear was restored but did not start again: {}",
                    e.message
                ));
            }
        }
        // (one arriving from another node is started by its move)
        if created && self.placed_elsewhere(&g.record().id).is_none() {
            let r = g.record();
            notes.push(format!(
                "gear {} was created stopped; start it with `gear start {}`",
                r.name, r.name
            ));
        }
        let r = g.record();
        self.event(
            g,
            reply::NodeEventKind::DeployDone,
            &format!(
                "restored from {source} (a snapshot of {}-{})",
                meta.name, meta.namespace
            ),
            r.active,
        );
        Ok(reply::Restored {
            gear: self.gear_summary(&r),
            created,
            uid_kept,
            archived_uid: meta.uid,
            entries,
            bytes,
            notes,
        })
    }

    /// After the swap: the active deployment built again (what builds make
    /// outside it is not carried), then the cartridge's `post-restore`.
    async fn finish_restore(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        active: Option<u32>,
        progress: &Progress,
    ) -> ApiResult<()> {
        let name = g.record().name;
        if let Some(active) = active.filter(|_| cart.manifest().deploy.accepts) {
            self.hook_with_repo(g, cart, HookCall::Build, Some(active))
                .await
                .map_err(|e| {
                    failed(format!(
                        "building the restored deployment {active} failed, the gear is as it \
                         was: {}; see `gear logs {name} --hooks`",
                        e.message
                    ))
                })?;
        }
        let said = self
            .cartridge_action(g, cart, "post-restore")
            .await
            .map_err(|e| {
                failed(format!(
                    "the cartridge's post-restore action failed, the gear is as it was: {}; see \
                     `gear logs {name} --hooks`",
                    e.message
                ))
            })?;
        if let Some(said) = said {
            let _ = progress.send(format!("post-restore: {}", said.trim()));
        }
        Ok(())
    }

    /// After a failed restore of an existing gear: its record as it was, its
    /// active deployment built again, and started if it ran.
    async fn put_back(&self, g: &Arc<Gear>, cart: &Cartridge, before: &GearRecord, run: bool) {
        if let Some(active) = before.active.filter(|_| cart.manifest().deploy.accepts) {
            let _ = self
                .hook_with_repo(g, cart, HookCall::Build, Some(active))
                .await;
        }
        if run && let Err(e) = self.start_locked(g, &Progress::discard()).await {
            tracing::warn!(gear = %before.label(), error = %e, "the gear did not start again after a failed restore");
        }
    }

    /// Notes about what the restore leaves out, with the aliases it keeps;
    /// and whether the gear has the archive's uid.
    fn restored_record(
        &self,
        meta: &Meta,
        before: &GearRecord,
    ) -> ((Vec<String>, Vec<String>), bool) {
        let mut notes = Vec::new();
        if let Ok(cart) = self.cartridge(&meta.cartridge)
            && cart.manifest().version.to_string() != meta.cartridge_version
        {
            notes.push(format!(
                "the archive was taken under {} {}; this node runs {} {}",
                meta.cartridge,
                meta.cartridge_version,
                meta.cartridge,
                cart.manifest().version
            ));
        }
        if before.uid != meta.uid {
            notes.push(format!(
                "uid {} of the archive is taken on this node (or outside its range): the gear runs \
                 as uid {} with MCS level {}",
                meta.uid, before.uid, before.mcs_level
            ));
        }
        let others: Vec<GearRecord> = self
            .gears_snapshot()
            .iter()
            .filter(|o| o.record().id != before.id)
            .map(|o| o.record())
            .collect();
        let mut aliases = Vec::new();
        for a in &meta.aliases {
            let taken = others
                .iter()
                .find(|o| o.aliases.contains(a) || self.public_name(o) == *a);
            match (
                taken,
                crate::alias::check_hostname(a, &self.config().domain),
            ) {
                (None, Ok(name)) => aliases.push(name),
                (Some(o), _) => notes.push(format!(
                    "alias {a} leads to gear {} in namespace {}; not restored",
                    o.name, o.namespace
                )),
                (None, Err(why)) => notes.push(format!("alias {a} not restored: {why}")),
            }
        }
        ((notes, aliases), before.uid == meta.uid)
    }
}

/// The record after a restore: the archive's deployments, environment and
/// HTTPS options, and the `aliases` kept; stopped, nothing pending.
fn apply(r: &mut GearRecord, meta: &Meta, aliases: &[String]) {
    r.deployments = meta.deployments.clone();
    r.active = meta.active;
    let past = meta.deployments.iter().map(|d| d.id + 1).max().unwrap_or(1);
    r.next_deployment = meta.next_deployment.max(past).max(r.next_deployment);
    r.user_env = meta.user_env.clone();
    r.cartridge_env = meta.cartridge_env.clone();
    r.process_env.clear();
    r.aliases = aliases.to_vec();
    r.https = meta.https;
    r.desired = Desired::Stopped;
    if r.state != GearState::New {
        r.state = GearState::Stopped;
    }
    r.failure = None;
    r.slot = 0;
}

/// Reads the archive on `input`: `snapshot.json` first, sent on `meta`;
/// then, once `go` names the staging directories, the rest into them.
fn read_archive(
    input: OwnedFd,
    meta: tokio::sync::oneshot::Sender<Meta>,
    go: std::sync::mpsc::Receiver<Result<Stage, String>>,
) -> Result<(u64, u64), UnpackError> {
    let gz = flate2::read::GzDecoder::new(unpack::PatientReader::new(input, IDLE));
    let rules = Rules {
        what: "snapshot",
        max_entries: MAX_ENTRIES,
        max_bytes: MAX_BYTES,
        too_many: format!(
            "the snapshot holds more than {MAX_ENTRIES} entries, more than a restore takes"
        ),
        too_much: format!(
            "the files add up to more than {}, more than a restore takes",
            gearhost_runtime::manifest::format_size(MAX_BYTES)
        ),
        end: "nothing was restored",
    };
    let owner = Cell::new(None);
    let mut meta = Some(meta);
    let mut stage: Option<Stage> = None;
    unpack::each_entry_routed(
        gz,
        &rules,
        |entry, raw, parts, budget| {
            let Some(stage) = &stage else {
                let first = parts.len() == 1
                    && parts[0] == Path::new(META)
                    && entry.header().entry_type().is_file();
                if !first {
                    return Err(refuse(
                        raw,
                        format!(
                            "a snapshot starts with {META}; this is not an archive `gear snapshot` wrote"
                        ),
                    ));
                }
                let size = entry.size();
                if size > MAX_META {
                    return Err(refuse(
                        raw,
                        format!(
                            "larger than {MAX_META} bytes, more than a gear's description takes"
                        ),
                    ));
                }
                budget.file(size, raw)?;
                let mut text = Vec::new();
                entry
                    .take(size)
                    .read_to_end(&mut text)
                    .map_err(|e| refuse(raw, format!("cannot read it: {e}")))?;
                let described = Meta::parse(&text).map_err(UnpackError::Archive)?;
                if let Some(tx) = meta.take() {
                    let _ = tx.send(described);
                }
                let got = go
                    .recv()
                    .map_err(|_| UnpackError::Archive("the restore was given up".into()))?
                    .map_err(UnpackError::Archive)?;
                owner.set(Some(got.owner));
                stage = Some(got);
                return Ok(Route::Done);
            };
            route(stage, entry.header().entry_type(), raw, parts)
        },
        |entry, at, budget| unpack::place_entry(entry, at, budget, owner.get()),
    )
}

/// Where an entry after `snapshot.json` goes.
fn route(
    stage: &Stage,
    kind: tar::EntryType,
    raw: &Path,
    parts: &[PathBuf],
) -> Result<Route, UnpackError> {
    let names: Vec<&str> = parts.iter().map(|p| p.to_str().unwrap_or("\0")).collect();
    let under = |root: &OwnedFd, skip: usize| {
        Ok(Route::Under {
            root: root
                .try_clone()
                .map_err(|e| refuse(raw, format!("cannot open the staging directory: {e}")))?,
            skip,
            owner: Some(stage.owner),
        })
    };
    match names.as_slice() {
        ["deployments"] | ["home"] | ["home", "app-root"] | ["home", "app-root", "data"]
            if kind.is_dir() =>
        {
            Ok(Route::Done)
        }
        ["deployments", n, ..] => match n.parse::<u32>() {
            Ok(id) if stage.ids.contains(&id) => under(&stage.deployments, 1),
            _ => Err(refuse(
                raw,
                format!("not a deployment {META} describes; the archive is damaged or forged"),
            )),
        },
        ["home", "app-root", "data", _, ..] => under(&stage.data, 3),
        _ => Err(refuse(
            raw,
            format!(
                "a snapshot holds only {META}, deployments/<n>/ and {}/; the archive is damaged \
                 or forged",
                super::snapshot::DATA
            ),
        )),
    }
}
