//! The seam between the request pipeline and the node. The pipeline asks
//! the node for four things only: the route table, the limits of its
//! configuration, a wake-up of an idle gear, and a connection to a gear's
//! port; and a gear for two: its frontend state and its lifecycle state.
//! [`Node`] answers with network namespaces and its lifecycle; the
//! pipeline's unit tests answer with loopback listeners and wake-ups they
//! script, and drive the same pipeline code without root or namespaces.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Frontend, GearFront, Target};
use crate::node::Node;
use crate::remote::Routed;
use crate::state::GearState;

/// The bounds the pipeline holds a request to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time allowed for a request head to arrive whole.
    pub header_timeout: Duration,
    /// Time allowed from a request's arrival to its answer's head.
    pub response_timeout: Duration,
    /// Longest time a write to a client may wait without any byte going.
    pub send_timeout: Duration,
    /// Largest request body passed on.
    pub max_body: u64,
}

/// Who a request another node of the cluster passed on comes from, as the
/// relay field says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// The client's address.
    pub client: String,
    /// It came over HTTPS.
    pub secure: bool,
    /// How many nodes passed it on so far.
    pub hops: u8,
}

/// How many times a request may be passed between nodes: once, and once
/// more by a node that was passed a request for a gear that just moved on.
/// Two nodes whose views of a move differ for a moment cannot pass a request
/// back and forth for longer.
pub(crate) const MAX_HOPS: u8 = 2;

/// A gear as the pipeline sees it.
pub(crate) trait BackendGear: Send + Sync + 'static {
    /// The frontend's state of the gear.
    fn front(&self) -> &GearFront;
    /// Its lifecycle state now.
    fn state(&self) -> GearState;
    /// The tag its upgraded connections carry in the keeper (which splices
    /// them through node restarts), or `None` to splice them in the node.
    fn keeper_tag(&self) -> Option<String> {
        None
    }
    /// The node of the cluster that holds the gear, when it is not this one:
    /// requests go to that node's frontend, which routes them again.
    fn owner(&self) -> Option<&str> {
        None
    }
    /// For a gear another node holds: writes the field (a whole line) that
    /// tells that node's frontend who the client is, `client` over HTTPS or
    /// not (`secure`), asking for `authority`, passed on `hops` times with
    /// this one.
    fn relay_field(&self, _from: &Relayed, _authority: &[u8], _out: &mut Vec<u8>) {}
}

/// The node as the pipeline sees it.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Its gears.
    type Gear: BackendGear;

    /// The route table and node-wide counters.
    fn frontend(&self) -> &Frontend<Self::Gear>;

    /// The bounds on requests.
    fn limits(&self) -> Limits;

    /// The domain of gears' public names, for the unknown-host page.
    fn domain(&self) -> &str;

    /// Wakes an idle gear (or waits for the wake-up in progress, or for an
    /// idling to end and the wake-up after it): `Ok` once it runs.
    fn wake(&self, gear: &Arc<Self::Gear>) -> impl Future<Output = Result<(), String>> + Send;

    /// The client's address and whether it came over HTTPS, from the relay
    /// field (`value`) of a request another node of the cluster passed on for
    /// `authority`; `None` when the field is not one a node of the cluster
    /// signed for this request (it is then ignored, and the connection's own
    /// peer is the client).
    fn relayed(&self, _value: &[u8], _authority: &[u8]) -> Option<Relayed> {
        None
    }

    /// Whether the node is fenced (cut off from its cluster): it serves none
    /// of its own gears.
    fn fenced(&self) -> bool {
        false
    }

    /// The key authorization for ACME HTTP-01 token `token`, while the node
    /// is answering that challenge.
    fn acme_challenge(&self, _token: &str) -> Option<String> {
        None
    }

    /// A new connection to `port` of the target's gear (the target's port,
    /// or where it is while the app serves from its other slot), or why
    /// there is none.
    fn connect(
        &self,
        target: &Target<Self::Gear>,
        port: u16,
    ) -> impl Future<Output = Result<TcpStream, String>> + Send;
}

impl BackendGear for Routed {
    fn front(&self) -> &GearFront {
        match self {
            Routed::Local(gear) => &gear.front,
            Routed::Remote(node) => &node.front,
        }
    }

    /// A gear another node holds counts as running here: that node's
    /// frontend wakes it, or says why it cannot.
    fn state(&self) -> GearState {
        match self {
            Routed::Local(gear) => gear.state(),
            Routed::Remote(_) => GearState::Running,
        }
    }

    fn keeper_tag(&self) -> Option<String> {
        match self {
            Routed::Local(gear) => {
                let id = gear.paths.root.file_name()?.to_str()?;
                Some(crate::keeper::websocket_tag(id))
            }
            Routed::Remote(_) => None,
        }
    }

    fn owner(&self) -> Option<&str> {
        match self {
            Routed::Local(_) => None,
            Routed::Remote(node) => Some(&node.name),
        }
    }

    fn relay_field(&self, from: &Relayed, authority: &[u8], out: &mut Vec<u8>) {
        if let Routed::Remote(node) = self {
            node.relay_field(from, authority, out);
        }
    }
}

impl Backend for Arc<Node> {
    type Gear = Routed;

    fn frontend(&self) -> &Frontend<Routed> {
        &self.frontend
    }

    fn limits(&self) -> Limits {
        let config = self.config();
        Limits {
            header_timeout: config.header_timeout,
            response_timeout: config.response_timeout,
            send_timeout: config.send_timeout,
            max_body: config.max_body,
        }
    }

    fn domain(&self) -> &str {
        &self.config().domain
    }

    fn wake(&self, gear: &Arc<Routed>) -> impl Future<Output = Result<(), String>> + Send {
        use futures_util::future::Either;
        match &**gear {
            Routed::Local(gear) => Either::Left(Node::wake(self, gear)),
            // never asked: a gear held elsewhere counts as running here
            Routed::Remote(_) => Either::Right(std::future::ready(Ok(()))),
        }
    }

    fn relayed(&self, value: &[u8], authority: &[u8]) -> Option<Relayed> {
        Node::relayed(self, value, authority)
    }

    fn fenced(&self) -> bool {
        Node::fenced(self)
    }

    fn acme_challenge(&self, token: &str) -> Option<String> {
        self.acme.as_ref()?.challenge(token)
    }

    /// Connects to `127.0.0.1:<port>` inside the gear's network namespace,
    /// or to the frontend of the node that holds the gear.
    async fn connect(&self, target: &Target<Routed>, port: u16) -> Result<TcpStream, String> {
        let timeout = self.config().connect_timeout;
        let gear = match &*target.gear {
            Routed::Local(gear) => gear,
            Routed::Remote(node) => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(node.addr))
                    .await
                    .map_err(|_| format!("node {} did not accept a connection in time", node.name))?
                    .map_err(|e| format!("node {} ({}) refused: {e}", node.name, node.addr))?;
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
        };
        let netns = gear.paths.netns();
        let stream = tokio::task::spawn_blocking(move || {
            let s =
                gearhost_sandbox::netns::connect(&netns, ([127, 0, 0, 1], port).into(), timeout)?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("nothing answers on port {port} inside the gear ({e})"))?;
        TcpStream::from_std(stream).map_err(|e| e.to_string())
    }
}
