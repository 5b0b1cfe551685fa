//! The front door: routes `http://<gear>-<namespace>.<domain>:<port>/` to the
//! app listening on its private port inside the gear's own network namespace,
//! through a socket the node opens inside that namespace (no veth, no NAT).
//!
//! A connection is routed by the `Host` header of its first request; the
//! request head gets `X-Forwarded-For`, `-Host` and `-Proto`, and from then on
//! bytes are spliced both ways, so keep-alive, chunked and streamed bodies and
//! websocket upgrades pass through untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::node::Node;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Accept connections until the listener fails.
pub async fn serve(node: Arc<Node>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (client, peer) = listener.accept().await?;
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(node, client, peer).await {
                tracing::debug!(error = %e, %peer, "frontend connection ended with an error");
            }
        });
    }
}

async fn respond(
    client: &mut TcpStream,
    status: &str,
    title: &str,
    text: &str,
) -> std::io::Result<()> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1><p>{text}</p><hr><p>gearhost</p></body></html>\n"
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Read until the end of the request head; returns the buffer and the head's length.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some((buf, end + 4)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some((buf, 0)));
        }
    }
}

async fn handle(node: Arc<Node>, mut client: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    let Ok(head) = tokio::time::timeout(Duration::from_secs(30), read_head(&mut client)).await
    else {
        return respond(
            &mut client,
            "408 Request Timeout",
            "Request timeout",
            "The request head did not arrive in time.",
        )
        .await;
    };
    let Some((buf, head_len)) = head? else {
        return Ok(());
    };
    if head_len == 0 {
        return respond(
            &mut client,
            "431 Request Header Fields Too Large",
            "Request head too large",
            "The request head is larger than 64 KiB.",
        )
        .await;
    }
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let host = head
        .lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("host")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let hostname = host.rsplit_once(':').map_or(host.as_str(), |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host.as_str()
        }
    });
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    let Some(route) = node.route(&hostname) else {
        return respond(
            &mut client,
            "404 Not Found",
            "No such gear",
            &format!("No gear answers to <code>{}</code> on this node. Gears are reached at <code>&lt;gear&gt;-&lt;namespace&gt;.{}</code>.", escape(&hostname), escape(&node.config().domain)),
        )
        .await;
    };
    if !route.running {
        return respond(
            &mut client,
            "503 Service Unavailable",
            "Gear not running",
            &format!(
                "Gear <code>{}</code> is not running; start it with <code>gear start</code>.",
                escape(&route.label)
            ),
        )
        .await;
    }
    let upstream = match node.connect(&route.gear, route.port).await {
        Ok(s) => s,
        Err(e) => {
            return respond(
                &mut client,
                "502 Bad Gateway",
                "Gear not answering",
                &format!(
                    "Gear <code>{}</code> does not answer on its port: {}",
                    escape(&route.label),
                    escape(&e.message)
                ),
            )
            .await;
        }
    };
    upstream.set_nonblocking(true)?;
    let mut upstream = TcpStream::from_std(upstream)?;
    // forwarding headers go right after the request line
    let line_end = head.find("\r\n").unwrap_or(0) + 2;
    let mut rewritten = String::with_capacity(head.len() + 128);
    rewritten.push_str(&head[..line_end]);
    rewritten.push_str(&format!(
        "X-Forwarded-For: {}\r\nX-Forwarded-Host: {host}\r\nX-Forwarded-Proto: http\r\n",
        peer.ip()
    ));
    for line in head[line_end..].split_inclusive("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if !["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            rewritten.push_str(line);
        }
    }
    upstream.write_all(rewritten.as_bytes()).await?;
    upstream.write_all(&buf[head_len..]).await?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}
