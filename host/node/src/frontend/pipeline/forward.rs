//! Phases 3 and 4 of a request: wake the gear if it is idle, then pass the
//! request to it and await its answer's head.

use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;

use super::super::backend::{Backend, BackendGear};
use super::super::gear::Forwarding;
use super::super::headers::MAX_ANSWER_HEAD;
use super::super::pages::{DRAIN_BYTES, Refused};
use super::super::stall::Bounded;
use super::super::wire::{self, BodyState, CopyError, HeadError, ReadBuf, ResponseHead, Upstream};
use super::{Client, Exchange, Framed, Target};
use crate::state::GearState;

/// Why forwarding stopped short of an answer.
pub(super) enum Halt {
    /// The frontend answers itself.
    Refuse(Refused),
    /// The client connection is closed without an answer (it went away).
    Close,
}

impl From<Refused> for Halt {
    fn from(refused: Refused) -> Halt {
        Halt::Refuse(refused)
    }
}

/// Phase 3, wake: an idle or frozen gear (or one being idled, or woken by another
/// request, or restarting under a hold) is woken, and the request waits
/// for it; a gear that is not
/// running otherwise is refused. Out: the request counted as being passed
/// to the gear, so that no idling stops the gear under it. `unread` is the
/// body left to drain, should it be refused.
pub(super) async fn wake<'t, B: Backend>(
    backend: &B,
    target: &'t Target<B::Gear>,
    unread: Option<u64>,
) -> Result<Forwarding<'t>, Refused> {
    let gear = &target.gear;
    // a node cut off from its cluster serves none of its own gears
    if gear.owner().is_none() && backend.fenced() {
        return Err(Refused::fenced(&target.label).pending(unread));
    }
    let front = gear.front();
    let state = gear.state();
    let waking = || front.waking.lock().is_ok_and(|w| w.is_some());
    let closing = front.closing.load(Ordering::SeqCst);
    // an idle gear is started, a frozen one thawed; one being idled, woken by another request or
    // restarted by the node (whatever its state on the way) is waited for
    let wake = matches!(state, GearState::Idle | GearState::Frozen) || closing || waking();
    if wake {
        if let Err(e) = backend.wake(gear).await {
            let now = gear.state();
            // stopped meanwhile (`gear stop`) rather than failed to start
            if matches!(now, GearState::Stopped | GearState::New) {
                return Err(Refused::not_running(&target.label, now).pending(unread));
            }
            return Err(Refused::wake_failed(&target.label, &e).pending(unread));
        }
    } else if state != GearState::Running {
        return Err(Refused::not_running(&target.label, state).pending(unread));
    }
    // from here the request goes to the gear: an idling that began meanwhile
    // is waited out (it waits for the requests already counted here)
    loop {
        if let Some(forwarding) = Forwarding::begin(front) {
            return Ok(forwarding);
        }
        if let Err(e) = backend.wake(gear).await {
            return Err(Refused::idled_not_woken(&target.label, &e).pending(unread));
        }
    }
}

/// What forwarding leaves for the relay: the gear's connection, its
/// answer's head parsed into the client's `response` (its bytes still in
/// the connection's buffer), and whether the whole request body went in.
pub(super) struct Answered {
    pub upstream: Upstream,
    pub body_through: bool,
}

/// Phase 4, forward: the request's head and body go to the gear while its
/// answer's head is awaited (a gear may answer, and stop reading, before
/// the body is through). A pooled connection the gear closed just before
/// it was used (an app's keep-alive timeout racing the request) is replaced
/// by a new one, once, when the request can be sent again whole and
/// safely: no answer byte came back, all of the body went in the first
/// write, and the method is idempotent (the app may have acted on it).
pub(super) async fn forward<B: Backend>(
    backend: &B,
    c: &mut Client,
    target: &Target<B::Gear>,
    ex: &mut Exchange<B::Gear>,
) -> Result<Answered, Halt> {
    let front = target.gear.front();
    let limits = backend.limits();
    let limit = limits.max_body;
    let (mut body, mut sent) = start_body(c, &ex.framed, limit).await?;
    let framed = &ex.framed;
    let deadline = tokio::time::Instant::from_std(ex.start) + limits.response_timeout;
    let whole_in_first_write = body.done();
    let mut fresh_only = false;
    let (upstream, answered, body_error) = loop {
        let pooled = if fresh_only {
            None
        } else {
            front.take(ex.start)
        };
        let reused = pooled.is_some();
        let mut upstream = match pooled {
            Some(u) => u,
            None => match connect(backend, target).await {
                Ok(u) => u,
                Err(e) => {
                    let refused = Refused::not_answering(&target.label, &e);
                    return Err(refused
                        .pending((!body.done()).then_some(DRAIN_BYTES))
                        .into());
                }
            },
        };
        if let Err(e) =
            wire::send_all(&mut upstream.stream, &mut upstream.sendfd, &mut c.to_gear).await
        {
            if reused {
                fresh_only = true;
                continue;
            }
            let refused = Refused::broke(&target.label, &e.to_string());
            return Err(refused
                .pending((!body.done()).then_some(DRAIN_BYTES))
                .into());
        }
        let (answered, body_error) = exchange(
            c,
            &mut upstream,
            &mut body,
            limit,
            &mut sent,
            deadline,
            framed.client_minor,
        )
        .await;
        if reused
            && framed.method.idempotent
            && whole_in_first_write
            && matches!(answered, Err(HeadError::Closed))
            && matches!(body_error, None | Some(CopyError::Write))
        {
            fresh_only = true;
            continue;
        }
        break (upstream, answered, body_error);
    };
    match body_error {
        Some(CopyError::TooLarge) => {
            return Err(Refused::too_large(limit).pending(Some(DRAIN_BYTES)).into());
        }
        Some(e @ CopyError::Framing(_)) => {
            return Err(Refused::bad_chunks(&e).pending(Some(DRAIN_BYTES)).into());
        }
        Some(CopyError::Read) => {
            // the client went away in the middle of its body
            ex.finish.status = 499;
            return Err(Halt::Close);
        }
        Some(CopyError::Write) | None => {}
    }
    let body_through = body.done();
    match answered {
        Ok(()) => Ok(Answered {
            upstream,
            body_through,
        }),
        Err(e) => {
            let refused = no_answer(&target.label, e, limits.response_timeout);
            Err(refused
                .pending((!body_through).then_some(DRAIN_BYTES))
                .into())
        }
    }
}

/// Before anything goes to the gear: a body over the limit is refused when
/// its length says so, a client that expects `100 Continue` gets it, and
/// the body's first bytes (read with the head) join the head for the gear.
/// Out: where the body stands, and the payload bytes taken so far.
async fn start_body(c: &mut Client, framed: &Framed, limit: u64) -> Result<(BodyState, u64), Halt> {
    let f = &framed.checked.facts;
    // the body limit: known lengths are refused before anything is sent
    if f.content_length.is_some_and(|n| n > limit) {
        return Err(Refused::too_large(limit).pending(framed.unread).into());
    }
    if f.expect_continue && framed.unread.is_some() && framed.client_minor == 1 {
        // the frontend reads the body itself, so it asks for it itself
        if c.out()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Err(Halt::Close);
        }
    }
    let mut body = BodyState::new(framed.checked.framing);
    let sent = match body.take(&mut c.buf, &mut c.to_gear, false) {
        Ok(n) => n,
        Err(e) => return Err(Refused::bad_chunks(&e).pending(Some(DRAIN_BYTES)).into()),
    };
    if sent > limit {
        return Err(Refused::too_large(limit).pending(Some(DRAIN_BYTES)).into());
    }
    Ok((body, sent))
}

/// The refusal for an answer head that did not come whole within `timeout`.
fn no_answer(label: &str, e: HeadError, timeout: std::time::Duration) -> Refused {
    let why = match e {
        HeadError::Timeout => return Refused::too_slow(label, timeout),
        HeadError::Closed => "the connection closed without an answer".to_string(),
        HeadError::Io(e) => e.to_string(),
        HeadError::Malformed(e) => format!("not HTTP: {e}"),
        HeadError::TooLarge => "a response head too large".to_string(),
    };
    Refused::bad_answer(label, &why)
}

/// Opens a new connection to the gear, counted.
async fn connect<B: Backend>(backend: &B, target: &Target<B::Gear>) -> Result<Upstream, String> {
    // counted against the serving slot before its port is chosen: a switch
    // to an app started beside waits for this connection to close before
    // it stops the app it leads to
    let lease = target.gear.front().live.lease();
    let port = gearhost_runtime::manifest::slot_port(target.port, lease.slot);
    let stream = backend.connect(target, port).await?;
    target
        .gear
        .front()
        .stats
        .upstream_connections
        .fetch_add(1, Ordering::Relaxed);
    Ok(Upstream::new(stream, Some(lease)))
}

/// Passes the rest of the request body up while the answer's head is
/// awaited, until the head is read, the deadline passes, or the body
/// fails in a way that ends the exchange. Out: how the head's reading
/// ended, and how the body's copy failed, if it did.
async fn exchange(
    c: &mut Client,
    upstream: &mut Upstream,
    body: &mut BodyState,
    limit: u64,
    sent: &mut u64,
    deadline: tokio::time::Instant,
    client_minor: u8,
) -> (Result<(), HeadError>, Option<CopyError>) {
    let mut body_error: Option<CopyError> = None;
    let (mut up_read, mut up_write) = upstream.stream.split();
    let (mut client_read, mut client_half) = c.stream.split();
    // interim answers go to the client under the send deadline
    let mut client_write = Bounded::new(&mut client_half, &mut c.stall);
    let pump = wire::pump(
        &mut client_read,
        &mut c.buf,
        &mut up_write,
        body,
        false,
        limit,
        sent,
        &mut c.body_out,
    );
    let answer = read_answer(
        &mut up_read,
        &mut upstream.buf,
        &mut c.response,
        &mut client_write,
        client_minor,
    );
    tokio::pin!(pump);
    tokio::pin!(answer);
    let mut pumping = true;
    let answered = loop {
        tokio::select! {
            r = &mut pump, if pumping => {
                pumping = false;
                if let Err(e) = r {
                    let stop = !matches!(e, CopyError::Write);
                    body_error = Some(e);
                    if stop {
                        break Ok(());
                    }
                }
            }
            r = &mut answer => break r,
            () = tokio::time::sleep_until(deadline) => break Err(HeadError::Timeout),
        }
    };
    (answered, body_error)
}

/// Reads the gear's answer head into `buf` and `head`, passing interim
/// answers (1xx other than 101) on to an HTTP/1.1 client and dropping
/// `100 Continue`, which the frontend already sent.
async fn read_answer(
    up: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut ReadBuf,
    head: &mut ResponseHead,
    client: &mut (impl tokio::io::AsyncWrite + Unpin),
    client_minor: u8,
) -> Result<(), HeadError> {
    loop {
        wire::read_response_head(up, buf, head, MAX_ANSWER_HEAD).await?;
        if !(100..200).contains(&head.status) || head.status == 101 {
            return Ok(());
        }
        if head.status != 100 && client_minor == 1 {
            // written anew, like every head the client gets from a gear
            let mut bytes = Vec::with_capacity(head.len + 16);
            gearhost_http::head::write_interim_head(&buf.data, head, &mut bytes);
            client.write_all(&bytes).await.map_err(HeadError::Io)?;
        }
        buf.consume(head.len);
    }
}
