//! Moving a gear to another node of the cluster (`gear move NAME NODE`).
//!
//! On the node that holds the gear: its new requests are held in the
//! frontend (before they count as the gear's, see
//! [`crate::frontend::MoveHold`]) and those on their way finish; the gear is
//! stopped if it ran, so that its files are at rest; its archive (as
//! `gear snapshot` writes it) streams to the other node as it is written.
//! There a `receive` brings it in under the same id, uid, MCS level, name
//! and aliases, counted as placed on the first node, and only then takes the
//! placement: one etcd transaction that compares every claim of the gear
//! and writes its placement with the new node. That write is the move's
//! commit: before it the gear is the first node's (a failure leaves it there
//! and starts it again), after it the second's, which starts it (or leaves
//! it to wake on its first request). The first node then removes its copy,
//! keeping the claims, routes the gear's names to the new node and lets the
//! held requests go there. Whether the move committed is read from etcd, not
//! from the answer, so a lost answer never leaves two live copies.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gearhost_cluster::Change;

use super::*;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::api::{ops, reply};
use crate::state::{Desired, GearState};
use crate::tenancy::Caller;

/// A gear arriving from another node: its id in the cluster and that node.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    pub id: String,
    pub from: String,
    /// Whether it comes from a node that is gone (a failover, a lost gear restored): it is
    /// taken only while that node stays gone.
    pub from_dead: bool,
    /// The uid it has in the cluster, when the archive may name another
    /// (a lost gear restored from any snapshot); else the archive's.
    pub uid: Option<u32>,
}

/// How long a move waits for the requests already on their way to the gear.
const MOVE_DRAIN: Duration = Duration::from_secs(10);

impl Node {
    /// `gear move NAME NODE`, on the node that holds the gear.
    pub async fn move_gear(
        self: &Arc<Self>,
        gear: &GearRef,
        to: &str,
        caller: &Caller,
        progress: &Progress,
    ) -> ApiResult<reply::Moved> {
        let started = Instant::now();
        let Some(cluster) = self.cluster().cloned() else {
            return Err(invalid(format!(
                "this node is not in a cluster, so there is no other node to move gear {} to",
                gear.name
            )));
        };
        let me = cluster.node().to_string();
        if to == me {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("gear {} is on node {to} already", gear.name),
            ));
        }
        let member = cluster
            .member(to)
            .await
            .map_err(crate::cluster::api_error)?
            .ok_or_else(|| {
                invalid(format!(
                    "the cluster has no node {to}; see `gear node list`"
                ))
            })?;
        if !member.is_up() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("node {to} is down (its lease expired); move the gear when it is back"),
            ));
        }
        let g = self.find(gear)?;
        let r = g.record();
        if !r.links.is_empty() || !self.linked_from(&r.id).is_empty() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} is linked to or from other gears, and links join gears of one node; \
                     unlink them, move them, then link them again",
                    r.name
                ),
            ));
        }
        // new requests wait; the ones on their way finish first
        let hold = g.front.hold_for_move();
        let _ = progress.send(format!("holding the requests for {}", r.label()));
        self.drain_for_move(&g).await;
        let op = g.op.lock().await;
        let _watch = g.hook_log.watch(progress);
        let r = g.record();
        let state = g.state();
        let start = matches!(
            state,
            GearState::Running | GearState::Starting | GearState::Frozen
        );
        let wake = start || state == GearState::Idle;
        let cart = self.cartridge(&r.cartridge)?;
        let (read, write) = std::io::pipe().map_err(internal)?;
        if start || g.supervisor.any_running() {
            let _ = progress.send(format!("stopping {} on {me}", r.name));
            if let Err(e) = self.stop_locked(&g, &cart).await {
                // not moved: it runs here again
                if start {
                    let _ = self.start_locked(&g, progress).await;
                }
                return Err(ApiError::new(
                    e.kind,
                    format!(
                        "gear {} was not moved: it could not be stopped for the move: {}",
                        r.name, e.message
                    ),
                ));
            }
        }
        let _ = progress.send(format!("sending {} to node {to}", r.name));
        let archive = tokio::fs::File::from_std(std::fs::File::from(OwnedFd::from(read)));
        let owner = crate::peer::Owner::of(member);
        let request = crate::api::Request::Receive(ops::Receive {
            gear: gear.clone(),
            id: r.id.clone(),
            from: me.clone(),
            wake,
            start,
            owner: r.owner.clone(),
        });
        let (written, asked) = tokio::join!(
            self.snapshot_locked(&g, OwnedFd::from(write), progress),
            crate::peer::ask_as_node(
                self,
                &owner,
                caller,
                &request,
                Some(Box::new(archive)),
                progress
            )
        );
        // the placement says whether the move took place, whatever the answer said
        let placed = cluster.placement(&r.id).await;
        let moved = matches!(&placed, Ok(Some(p)) if p.node == to);
        if !moved {
            let why = match (written, asked) {
                (Err(e), _) | (_, Err(e)) => e.message,
                (Ok(_), Ok(_)) => format!("node {to} answered, but the placement does not name it"),
            };
            if start {
                let _ = progress.send(format!("starting {} again on {me}", r.name));
                if let Err(e) = self.start_locked(&g, progress).await {
                    tracing::warn!(gear = %r.label(), error = %e, "a gear whose move failed did not start again");
                }
            }
            return Err(ApiError::new(
                ErrorKind::Failed,
                format!(
                    "gear {} was not moved to node {to}, it stays on {me}: {why}",
                    r.name
                ),
            ));
        }
        // the other node holds it now: this copy goes (its claims are the other node's)
        lock(&self.elsewhere).insert(r.id.clone(), to.to_string());
        let mut notes = Vec::new();
        if let Err(e) = self.destroy_locked(&g, &Progress::discard()).await {
            tracing::warn!(gear = %r.label(), error = %e, "the copy of a moved gear could not be removed");
            notes.push(format!(
                "its copy on {me} could not be removed ({}); it is kept stopped",
                e.message
            ));
        }
        // its names lead to the other node from here on, before the held requests go
        if let Ok(Some(p)) = placed {
            self.apply_cluster_change(Change::Placed(p));
        }
        drop(op);
        drop(hold);
        let (bytes, arrived) = match asked {
            Ok((value, bytes)) => (bytes, crate::api::decode_answer::<ops::Receive>(value).ok()),
            Err(e) => {
                notes.push(format!(
                    "node {to} took the gear, but its answer was lost: {}",
                    e.message
                ));
                (0, None)
            }
        };
        let millis = started.elapsed().as_millis() as u64;
        let _ = progress.send(format!("moved {} to node {to} in {millis} ms", r.name));
        let gear = match arrived {
            Some(a) => {
                notes.extend(a.notes);
                a.gear
            }
            None => self.gear_summary(&r),
        };
        Ok(reply::Moved {
            gear,
            from: me,
            to: to.to_string(),
            bytes,
            millis,
            notes,
        })
    }

    /// Waits (boundedly) until no request is between its route and its
    /// admission, and none is on its way to the gear's app.
    async fn drain_for_move(&self, g: &Gear) {
        let deadline = Instant::now() + MOVE_DRAIN;
        while (g.front.entering.load(Ordering::SeqCst) != 0
            || g.front.active.load(Ordering::SeqCst) != 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `receive`: the arriving half of a move, on the node the gear moves to.
    pub async fn receive(
        self: &Arc<Self>,
        op: ops::Receive,
        fds: Vec<OwnedFd>,
        progress: &Progress,
    ) -> ApiResult<reply::Restored> {
        let Some(cluster) = self.cluster().cloned() else {
            return Err(invalid(
                "this node is not in a cluster, so no gear can move to it".to_string(),
            ));
        };
        let arrival = Arrival {
            id: op.id.clone(),
            from: op.from.clone(),
            from_dead: false,
            uid: None,
        };
        let owner = op.owner.as_deref().map(|user| self.owner(user));
        let source = format!("the move from node {}", op.from);
        let restored = self
            .arrive(
                &cluster,
                &op.gear,
                (&source, fds),
                owner.as_ref(),
                &arrival,
                (op.wake, op.start),
                progress,
            )
            .await?;
        // a stateless gear's replica is kept by another node again
        self.replicate_soon(&op.gear);
        Ok(restored)
    }

    /// A gear arriving from another node (a move, a failover, a lost gear
    /// restored): restored here from the archive `fds` holds (`source` names
    /// it), then its placement taken ([`Node::take_placement`]).
    #[allow(clippy::too_many_arguments)] // the arrival's parts, each from its own caller
    pub(crate) async fn arrive(
        self: &Arc<Self>,
        cluster: &gearhost_cluster::Cluster,
        gear: &GearRef,
        (source, fds): (&str, Vec<OwnedFd>),
        owner: Option<&Owner>,
        arrival: &Arrival,
        (wake, start): (bool, bool),
        progress: &Progress,
    ) -> ApiResult<reply::Restored> {
        let (mut restored, g) = self
            .restore_arriving(gear, source, fds, owner, progress, Some(arrival))
            .await?;
        self.take_placement(
            cluster,
            &g,
            (&arrival.from, arrival.from_dead),
            (wake, start),
            progress,
            &mut restored.notes,
        )
        .await?;
        restored.gear = self.gear_summary(&g.record());
        Ok(restored)
    }

    /// The commit of a gear `g` arriving from node `from` (a move, a
    /// failover), restored here and counted as `from`'s so far: its
    /// placement taken in one transaction that compares every claim and that
    /// the placement still names `from`; then it is this node's, routed here,
    /// and it wakes on its first request or starts now (`wake`, `start`).
    /// Not taken, this copy goes and the gear stays `from`'s.
    pub(crate) async fn take_placement(
        &self,
        cluster: &gearhost_cluster::Cluster,
        g: &Arc<Gear>,
        (from, from_dead): (&str, bool),
        (wake, start): (bool, bool),
        progress: &Progress,
        notes: &mut Vec<String>,
    ) -> ApiResult<()> {
        let _op = g.op.lock().await;
        if wake {
            // a request that comes once the placement is taken wakes it
            g.update(&self.config, |r| {
                r.state = GearState::Idle;
                r.desired = Desired::Running;
            })?;
        }
        let r = g.record();
        let placement = crate::cluster::placement(&r, cluster.node());
        let claimed = if from_dead {
            cluster.claim_from_dead(&placement, from).await
        } else {
            cluster.claim_existing(&placement, Some(from)).await
        };
        if let Err(e) = claimed {
            // not taken: this copy goes (counted as the other node's, its claims stay)
            if let Err(again) = self.destroy_locked(g, &Progress::discard()).await {
                tracing::warn!(gear = %r.label(), error = %again, "cannot remove a gear that could not arrive");
            }
            return Err(ApiError::new(
                ErrorKind::Failed,
                format!(
                    "node {} could not take gear {}'s placement: {e}",
                    cluster.node(),
                    r.name
                ),
            ));
        }
        lock(&self.elsewhere).remove(&r.id);
        self.update_routes(g);
        if start {
            let _ = progress.send(format!("starting {}", r.name));
            if let Err(e) = self.start_locked(g, progress).await {
                notes.push(format!(
                    "the gear arrived but did not start: {}; it wakes on its next request",
                    e.message
                ));
            }
        }
        Ok(())
    }
}
