//! Phase 5 of a request: the gear's answer to the client.

use std::sync::atomic::Ordering;

use http::StatusCode;
use tokio::io::AsyncWriteExt;

use gearhost_http::Framing;
use gearhost_http::fields::facts;

use super::super::backend::BackendGear;
use super::super::headers::{self, AnswerShape};
use super::super::pages::{DRAIN_BYTES, Refused};
use super::super::stall::Bounded;
use super::super::tls::ClientStream;
use super::super::wire::{self, BodyState, Upstream};
use super::forward::Answered;
use super::{Client, Exchange, Next, Target};

/// Phase 5, relay: checks the answer's head (in `answered`), writes it anew
/// for the client, and passes the body on as it comes (or, after `101`,
/// splices both sides). The gear's connection goes back to the pool when it
/// can carry another request. Out: what happens to the client connection.
pub(super) async fn relay<G: BackendGear>(
    c: &mut Client,
    target: &Target<G>,
    mut ex: Exchange<G>,
    answered: Answered,
) -> Next {
    let Answered {
        mut upstream,
        body_through,
    } = answered;
    let status = c.response.status;
    let rf = facts(&upstream.buf.data, &c.response.headers);
    let problem = if status == 101 && !ex.framed.checked.upgrade {
        Some(Refused::switched_unasked(&target.label))
    } else if rf.bad_length {
        Some(Refused::bad_length(&target.label))
    } else {
        None
    };
    if let Some(refused) = problem {
        let refused = refused.pending((!body_through).then_some(DRAIN_BYTES));
        return ex.refuse(c, refused).await;
    }
    let front = target.gear.front();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    front.stats.response(code, ex.start.elapsed());
    ex.finish.status = status;
    let framing = headers::answer_framing(status, ex.framed.method.head, &rf);
    let client_minor = ex.framed.client_minor;
    // an HTTP/1.0 client gets a chunked answer unchunked, delimited by the
    // close; an HTTP/2 stream by its end (`ClientStream::end_of_answer`)
    let decode = framing == Framing::Chunked && (client_minor == 0 || c.stream.http2());
    let keep = ex.framed.keep && body_through && framing != Framing::Close && !decode;
    let shape = AnswerShape {
        framing,
        decode,
        keep,
        head_request: ex.framed.method.head,
        client_minor,
        hsts: ex.hsts,
    };
    if let ClientStream::Http2(stream) = &c.stream {
        // an HTTP/2 stream's response is made from the gear's head at once
        c.to_client.clear();
        if stream
            .answer
            .respond(&upstream.buf.data, &c.response, &rf, shape)
            .is_err()
        {
            return Next::Close;
        }
    } else {
        headers::write_response_head(
            &upstream.buf.data,
            &c.response,
            &rf,
            shape,
            &mut c.to_client,
        );
    }
    upstream.buf.consume(c.response.len);

    if status == 101 {
        return upgrade(c, target, ex, upstream).await;
    }

    // the body: its first bytes with the head, the rest as it comes
    let mut body = BodyState::new(framing);
    match body.take(&mut upstream.buf, &mut c.to_client, decode) {
        Ok(n) => ex.finish.bytes = n,
        Err(_) => return Next::Close,
    }
    let first = wire::send_to_client(&mut c.stream, &mut c.sendfd, &mut c.to_client);
    if c.stall.bound(first).await.is_err() {
        return Next::Close;
    }
    let mut copied = ex.finish.bytes;
    let pumped = wire::pump(
        &mut upstream.stream,
        &mut upstream.buf,
        &mut Bounded::new(&mut c.stream, &mut c.stall),
        &mut body,
        decode,
        u64::MAX,
        &mut copied,
        &mut c.body_out,
    )
    .await;
    ex.finish.bytes = copied;
    if pumped.is_err() {
        // cut short: the client cannot tell where this answer ends otherwise
        return Next::Close;
    }
    c.stream.end_of_answer();
    // the gear's connection goes back to the pool when it can carry another request
    if body.done()
        && framing != Framing::Close
        && body_through
        && !rf.close
        && c.response.minor == 1
        && upstream.buf.data.is_empty()
    {
        ex.finish.upstream = Some(upstream);
    }
    drop(ex);
    if keep { Next::KeepAlive } else { Next::Close }
}

/// Both sides switch protocols: what each already sent the other goes
/// first, then bytes are spliced until either closes, by the node's keeper
/// when it has one and the client speaks plain HTTP (so the connection
/// survives node restarts), else here. The request is over (and logged); the
/// connection counts as the gear's activity until then.
async fn upgrade<G: BackendGear>(
    c: &mut Client,
    target: &Target<G>,
    ex: Exchange<G>,
    mut upstream: Upstream,
) -> Next {
    let front = target.gear.front();
    front.stats.upgrades.fetch_add(1, Ordering::Relaxed);
    c.to_client.extend_from_slice(&upstream.buf.data);
    upstream.buf.data.clear();
    let to_gear = std::mem::take(&mut c.buf.data);
    drop(ex);
    front.active.fetch_add(1, Ordering::Relaxed);
    c.in_flight = None;
    // plain connections go to the keeper, so they outlive this node process
    if let (Some(tag), Some(keeper)) = (target.gear.keeper_tag(), crate::keeper::get())
        && let Some(client) = c.stream.tcp()
    {
        use std::os::fd::AsFd;
        let gear = target.gear.clone();
        let lease = upstream.lease.take();
        let ended: crate::keeper::OnClose = Box::new(move || {
            drop(lease);
            let front = gear.front();
            front.active.fetch_sub(1, Ordering::Relaxed);
            front.touch();
        });
        match keeper.splice(
            tag,
            client.as_fd(),
            upstream.stream.as_fd(),
            &c.to_client,
            &to_gear,
            Some(c.stall.limit()),
            ended,
        ) {
            // the node's copies close; the keeper's stay open
            Ok(()) => return Next::Close,
            Err(ended) => {
                ended();
                front.active.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // a spliced connection lasts as long as its peers want: a drain does not wait for it
    let mut client = Bounded::new(&mut c.stream, &mut c.stall);
    if client.write_all(&c.to_client).await.is_ok()
        && upstream.stream.write_all(&to_gear).await.is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream.stream).await;
    }
    front.active.fetch_sub(1, Ordering::Relaxed);
    front.touch();
    Next::Close
}
