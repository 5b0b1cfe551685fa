//! The request pipeline driven for real, without root or namespaces: a
//! frontend listener on loopback serves through `serve` (the code the
//! node's workers run), a test backend routes to apps on loopback ports and
//! scripts wake-ups, and clients and apps are raw sockets reading and
//! writing HTTP/1.1 bytes themselves (see `harness`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::frontend::backend::{BackendGear, Limits};
use crate::frontend::metrics::{Refusal, render_frontend};
use crate::state::GearState;

mod harness;
mod http2;
mod moving;
mod stall;
use harness::{
    App, Conn, Reply, World, closed_port, get, limits, no_wake, ok, wake_times_out, wakes_after,
    within,
};

// -- route -------------------------------------------------------------------

#[tokio::test]
async fn requests_are_routed_by_default_name_and_alias_on_one_connection() {
    let app = App::start(|r| {
        let host = r.field("host").unwrap_or("").to_string();
        Reply::Send(ok(&host))
    })
    .await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/a")).await;
    assert_eq!(c.response(false).await.text(), "app-ns.gears.test");
    c.send(&get("WWW.Example.Org:8080", "/b")).await;
    assert_eq!(c.response(false).await.text(), "WWW.Example.Org:8080");
    // an absolute target's authority wins over the Host field
    c.send(b"GET http://app-ns.gears.test./c HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.text(), "app-ns.gears.test.");
    let paths: Vec<String> = app
        .seen()
        .iter()
        .map(|m| m.head.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert_eq!(
        world.node.connects.load(Ordering::SeqCst),
        1,
        "one connection reused"
    );
}

#[tokio::test]
async fn an_unknown_host_gets_the_404_page_and_the_connection_stays() {
    let app = App::ok("hello").await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(&get("nobody-ns.gears.test", "/")).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 404);
    assert_eq!(page.field("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        page.text().contains("<code>nobody-ns.gears.test</code>"),
        "{}",
        page.text()
    );
    assert!(page.text().contains("&lt;namespace&gt;.gears.test"));
    assert_eq!(page.field("connection"), None);
    // the same connection carries a request for a gear that exists
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.text(), "hello");
    let stats = &world.node.frontend.stats;
    assert_eq!(stats.refusals(Refusal::UnknownHost), 1);
    assert_eq!(stats.responses(4), 1);
    assert!(app.seen().len() == 1);
}

// -- frame and header policy ---------------------------------------------------

#[tokio::test]
async fn forwarding_fields_are_set_and_hop_by_hop_fields_dropped_both_ways() {
    let app = App::start(|_| {
        Reply::Send(
            b"HTTP/1.1 200 OK\r\nConnection: X-Gear-Hop\r\nX-Gear-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
              X-App: yes\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    })
    .await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(
        b"GET /h HTTP/1.1\r\nHost: app-ns.gears.test\r\nConnection: X-Client-Hop\r\n\
          X-Client-Hop: 1\r\nKeep-Alive: 300\r\nProxy-Authorization: secret\r\n\
          X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nAccept: text/plain\r\n\r\n",
    )
    .await;
    let answer = c.response(false).await;
    assert_eq!(answer.text(), "ok");
    assert_eq!(answer.field("x-app"), Some("yes"));
    for hop in ["connection", "x-gear-hop", "keep-alive"] {
        assert_eq!(
            answer.field(hop),
            None,
            "{hop} reached the client: {}",
            answer.head
        );
    }
    let seen = app.seen();
    let request = &seen[0];
    assert_eq!(request.field("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(request.field("x-forwarded-host"), Some("app-ns.gears.test"));
    assert_eq!(request.field("x-forwarded-proto"), Some("http"));
    assert_eq!(request.field("accept"), Some("text/plain"));
    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
    ] {
        assert_eq!(
            request.field(hop),
            None,
            "{hop} reached the gear: {}",
            request.head
        );
    }
}

#[tokio::test]
async fn heads_that_cannot_be_read_one_way_are_refused() {
    let app = App::ok("never").await;
    let world = World::running(&app).await;
    // no Host
    let mut c = world.client().await;
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 400);
    assert!(page.text().contains("No host name"));
    assert_eq!(page.field("connection"), Some("close"));
    assert!(c.closed().await);
    // framed two ways: nothing of it reaches the gear
    let mut c = world.client().await;
    c.send(
        b"POST / HTTP/1.1\r\nHost: app-ns.gears.test\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 400);
    assert!(
        page.text().contains("cannot be passed on"),
        "{}",
        page.text()
    );
    assert!(c.closed().await);
    // not HTTP at all
    let mut c = world.client().await;
    c.send(b"HELLO THERE\r\n\r\n").await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 400);
    assert!(page.text().contains("not HTTP/1.1 the frontend can read"));
    assert!(c.closed().await);
    assert_eq!(world.node.frontend.stats.refusals(Refusal::BadRequest), 3);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_oversized_head_gets_431() {
    let app = App::ok("never").await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    let mut head = b"GET / HTTP/1.1\r\nHost: app-ns.gears.test\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', super::MAX_HEAD + 10));
    head.extend_from_slice(b"\r\n\r\n");
    // the frontend may answer and close before all of it is written
    let _ = c.stream.write_all(&head).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 431);
    assert!(
        page.text()
            .contains(&format!("at most {} bytes", super::MAX_HEAD))
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_head_not_sent_in_time_ends_the_connection_without_an_answer() {
    let app = App::ok("never").await;
    let limits = Limits {
        header_timeout: Duration::from_millis(200),
        ..limits()
    };
    let world = World::new(app.port, GearState::Running, no_wake(), limits).await;
    let mut c = world.client().await;
    let start = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: app-ns").await;
    assert!(c.closed().await);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connect_is_refused_as_no_forward_proxy() {
    let app = App::ok("never").await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(b"CONNECT app-ns.gears.test:80 HTTP/1.1\r\nHost: app-ns.gears.test:80\r\n\r\n")
        .await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 405, "{}", page.head);
    assert_eq!(world.gear.front.stats.refusals(Refusal::BadRequest), 1);
    assert_eq!(world.node.connects.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let app = App::ok("fine").await;
    let limits = Limits {
        max_body: 100,
        ..limits()
    };
    let world = World::new(app.port, GearState::Running, no_wake(), limits).await;
    // a known length is refused before anything reaches the gear
    let mut c = world.client().await;
    c.send(b"POST / HTTP/1.1\r\nHost: app-ns.gears.test\r\nContent-Length: 101\r\n\r\n")
        .await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 413);
    assert!(page.text().contains("at most 100 bytes"));
    assert_eq!(page.field("connection"), Some("close"));
    assert_eq!(world.node.connects.load(Ordering::SeqCst), 0);
    // a chunked one when it grows past the limit
    let mut c = world.client().await;
    c.send(b"POST / HTTP/1.1\r\nHost: app-ns.gears.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let chunk = format!("40\r\n{}\r\n", "x".repeat(64));
    c.send(chunk.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(chunk.as_bytes()).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 413);
    assert_eq!(world.gear.front.stats.refusals(Refusal::TooLarge), 2);
}

// -- wake ------------------------------------------------------------------------

#[tokio::test]
async fn a_request_for_an_idle_gear_is_held_until_it_wakes_then_answered() {
    let app = App::ok("awake").await;
    let world = World::new(
        app.port,
        GearState::Idle,
        wakes_after(Duration::from_millis(300)),
        limits(),
    )
    .await;
    let mut c = world.client().await;
    let start = Instant::now();
    c.send(&get("app-ns.gears.test", "/")).await;
    let answer = c.response(false).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text(), "awake");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "not held for the wake-up"
    );
    assert_eq!(world.gear.state(), GearState::Running);
    // the next request finds it running: no second wake-up
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.status(), 200);
    assert_eq!(world.node.wakes.load(Ordering::SeqCst), 1);
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test]
async fn a_wake_up_that_times_out_is_answered_503() {
    let app = App::ok("never").await;
    let world = World::new(
        app.port,
        GearState::Idle,
        wake_times_out(Duration::from_millis(300)),
        limits(),
    )
    .await;
    let mut c = world.client().await;
    let start = Instant::now();
    c.send(&get("www.example.org", "/")).await;
    let page = c.response(false).await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "not held for the wake-up"
    );
    assert_eq!(page.status(), 503);
    assert_eq!(page.field("retry-after"), Some("5"));
    let text = page.text();
    assert!(text.contains("Gear could not be woken"), "{text}");
    assert!(
        text.contains(
            "<code>app-ns</code> was idle and did not start again: it did not answer within 300ms"
        ),
        "{text}"
    );
    assert_eq!(world.gear.front.stats.refusals(Refusal::WakeFailed), 1);
    assert_eq!(world.gear.front.stats.responses(5), 1);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
    // the refusal leaves the connection open for the next request
    c.send(&get("www.example.org", "/")).await;
    assert_eq!(c.response(false).await.status(), 503);
}

#[tokio::test]
async fn a_stopped_gear_is_answered_503_without_a_wake_up() {
    let app = App::ok("never").await;
    let world = World::new(app.port, GearState::Stopped, no_wake(), limits()).await;
    let mut c = world.client().await;
    c.send(b"HEAD / HTTP/1.1\r\nHost: app-ns.gears.test\r\n\r\n")
        .await;
    let page = c.response(true).await;
    assert_eq!(page.status(), 503);
    assert!(page.field("content-length").is_some_and(|n| n != "0"));
    // a HEAD answer has no body: the next bytes are the next answer
    c.send(&get("app-ns.gears.test", "/")).await;
    let page = c.response(false).await;
    assert!(
        page.text().contains("is stopped; start it with"),
        "{}",
        page.text()
    );
    assert_eq!(world.node.wakes.load(Ordering::SeqCst), 0);
    assert_eq!(world.gear.front.stats.refusals(Refusal::NotRunning), 2);
}

// -- forward and relay -----------------------------------------------------------

#[tokio::test]
async fn chunked_bodies_pass_both_ways_on_a_kept_alive_connection() {
    let app = App::start(|r| {
        // the body as the gear got it, sent back in chunks of its own
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [&body[..body.len() / 2], &body[body.len() / 2..]] {
            out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        Reply::Send(out)
    })
    .await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    for round in 0..2 {
        c.send(b"POST /up HTTP/1.1\r\nHost: app-ns.gears.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.send(b"6\r\n world\r\n0\r\n\r\n").await;
        let answer = c.response(false).await;
        assert_eq!(answer.status(), 200, "round {round}");
        assert_eq!(answer.field("transfer-encoding"), Some("chunked"));
        assert_eq!(answer.field("connection"), None);
        // the chunks as the gear sent them, decoded here
        assert_eq!(answer.text(), "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].field("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[1].body, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    // both requests went over one connection to the gear, now pooled
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    world.settle().await;
    assert_eq!(world.gear.front.pooled(), 1);
    assert_eq!(
        world
            .gear
            .front
            .stats
            .upstream_connections
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn an_http10_client_gets_a_chunked_answer_unchunked_to_the_close() {
    let app = App::start(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec())
    })
    .await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(b"GET / HTTP/1.0\r\nHost: app-ns.gears.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let answer = c.response(false).await;
    assert_eq!(answer.field("transfer-encoding"), None);
    assert_eq!(answer.field("connection"), Some("close"));
    assert_eq!(answer.text(), "abcde");
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_frontend() {
    let app = App::start(|r| Reply::Send(ok(&format!("got {}", r.body.len())))).await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(b"PUT /f HTTP/1.1\r\nHost: app-ns.gears.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await;
    let interim = c.response(false).await;
    assert_eq!(interim.status(), 100);
    c.send(b"abc").await;
    assert_eq!(c.response(false).await.text(), "got 3");
    assert_eq!(app.seen()[0].field("expect"), None);
}

#[tokio::test]
async fn a_gear_that_closes_without_answering_gets_502() {
    let app = App::start(|_| Reply::Close).await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 502);
    assert!(
        page.text()
            .contains("the connection closed without an answer"),
        "{}",
        page.text()
    );
    assert_eq!(world.gear.front.stats.refusals(Refusal::BadGateway), 1);
    // and one that answers with something else than HTTP
    let app = App::start(|_| Reply::Send(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec())).await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 502);
    assert!(page.text().contains("not HTTP"), "{}", page.text());
}

#[tokio::test]
async fn a_gear_that_does_not_listen_gets_502_and_one_too_slow_504() {
    let world = World::new(closed_port().await, GearState::Running, no_wake(), limits()).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 502);
    assert!(
        page.text()
            .contains("does not accept connections: nothing answers on port")
    );

    let app = App::start(|_| Reply::Hang).await;
    let limits = Limits {
        response_timeout: Duration::from_millis(300),
        ..limits()
    };
    let world = World::new(app.port, GearState::Running, no_wake(), limits).await;
    let mut c = world.client().await;
    let start = Instant::now();
    c.send(&get("app-ns.gears.test", "/slow")).await;
    let page = c.response(false).await;
    assert_eq!(page.status(), 504);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(
        page.text().contains("did not answer within 300ms"),
        "{}",
        page.text()
    );
    assert_eq!(world.gear.front.stats.refusals(Refusal::Timeout), 1);
}

#[tokio::test]
async fn an_answer_cut_short_closes_the_client_connection() {
    // an app that closes its connection in the middle of the body
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut conn = Conn::new(stream);
        conn.request().await;
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
            .await;
        // dropped: closed in the middle of the body
    });
    let world = World::new(port, GearState::Running, no_wake(), limits()).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    let head = within("a head", c.head()).await.expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let rest = within("the close", c.until_close()).await;
    assert_eq!(rest, b"only ten..");
    world.settle().await;
    assert_eq!(world.gear.front.pooled(), 0);
}

#[tokio::test]
async fn an_unasked_switch_of_protocols_is_502_and_an_asked_one_is_spliced() {
    let app = App::start(|r| {
        Reply::Upgrade(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {}\r\n\r\n",
                r.field("upgrade").unwrap_or("none")
            )
            .into_bytes(),
        )
    })
    .await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.status(), 502);

    let mut c = world.client().await;
    c.send(b"GET /ws HTTP/1.1\r\nHost: app-ns.gears.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await;
    let switched = c.response(false).await;
    assert_eq!(switched.status(), 101);
    assert_eq!(switched.field("upgrade"), Some("echo"));
    c.send(b"ping").await;
    assert_eq!(within("the echo", c.exact(4)).await, b"ping");
    assert_eq!(app.seen()[1].field("upgrade"), Some("echo"));
    assert_eq!(world.gear.front.stats.upgrades.load(Ordering::Relaxed), 1);
    // the spliced connection counts as the gear's activity while it lasts
    assert_eq!(world.gear.front.active.load(Ordering::SeqCst), 1);
    drop(c);
    world.settle().await;
}

// -- metrics and access log ----------------------------------------------------

#[tokio::test]
async fn counters_and_access_log_lines_follow_each_request() {
    let app = App::start(|r| {
        if r.head.contains(" /fail ") {
            Reply::Close
        } else {
            Reply::Send(ok("fine!"))
        }
    })
    .await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/ok?x=\"1\"")).await;
    assert_eq!(c.response(false).await.status(), 200);
    c.send(&get("unknown.gears.test", "/")).await;
    assert_eq!(c.response(false).await.status(), 404);
    c.send(b"HEAD /fail HTTP/1.1\r\nHost: app-ns.gears.test\r\n\r\n")
        .await;
    assert_eq!(c.response(true).await.status(), 502);
    drop(c);

    let log = world.access_log().await;
    assert_eq!(log.len(), 2, "{log:?}");
    let fields: Vec<&str> = log[0].splitn(2, ' ').collect();
    assert!(fields[0].ends_with('Z'), "{}", log[0]);
    let rest = fields[1];
    assert!(
        rest.starts_with(r#"127.0.0.1 "GET /ok?x=\"1\" HTTP/1.1" 200 5 "#),
        "{rest}"
    );
    assert!(rest.ends_with(r#"ms "test/1""#), "{rest}");
    assert!(
        log[1].contains(r#" 127.0.0.1 "HEAD /fail HTTP/1.1" 502 0 "#),
        "{}",
        log[1]
    );
    assert!(log[1].ends_with(r#"ms "-""#), "{}", log[1]);

    let node = &world.node.frontend;
    let gear = &world.gear.front.stats;
    assert_eq!((gear.responses(2), gear.responses(5)), (1, 1));
    assert_eq!(gear.refusals(Refusal::BadGateway), 1);
    assert_eq!(node.stats.refusals(Refusal::UnknownHost), 1);
    let end = Instant::now() + Duration::from_secs(5);
    while node.connections.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < end,
            "the client connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(node.connections_total.load(Ordering::SeqCst), 1);
    let mut out = String::new();
    render_frontend(
        &mut out,
        &[(String::new(), &node.stats), ("app-ns".to_string(), gear)],
        node,
    );
    for line in [
        r#"gearhost_frontend_requests_total{gear="app-ns",status="2xx"} 1"#,
        r#"gearhost_frontend_requests_total{gear="app-ns",status="5xx"} 1"#,
        r#"gearhost_frontend_requests_total{gear="",status="4xx"} 1"#,
        r#"gearhost_frontend_errors_total{gear="app-ns",reason="bad_gateway"} 1"#,
        r#"gearhost_frontend_request_duration_seconds_count{gear="app-ns"} 2"#,
        r#"gearhost_frontend_upstream_connections_total{gear="app-ns"} 2"#,
        "gearhost_frontend_connections_total 1",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line} in\n{out}");
    }
}

#[tokio::test]
async fn a_request_meeting_an_idling_waits_for_the_wake_up_after_it() {
    let app = App::ok("after the idling").await;
    // the idler has begun: the gear still runs, but is closing
    let wake: harness::WakeFn = Box::new(|gear| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            gear.front.closing.store(false, Ordering::SeqCst);
            Ok(())
        })
    });
    let world = World::new(app.port, GearState::Running, wake, limits()).await;
    world.gear.front.closing.store(true, Ordering::SeqCst);
    let mut c = world.client().await;
    let start = Instant::now();
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.text(), "after the idling");
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(world.node.wakes.load(Ordering::SeqCst), 1);
    world.settle().await;
    assert_eq!(world.gear.front.forwarding.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = App::start(|r| Reply::Send(ok(r.head.split(' ').nth(1).unwrap_or("?")))).await;
    let world = World::running(&app).await;
    let mut c = world.client().await;
    let mut both = get("app-ns.gears.test", "/first");
    both.extend_from_slice(&get("www.example.org", "/second"));
    c.send(&both).await;
    assert_eq!(c.response(false).await.text(), "/first");
    assert_eq!(c.response(false).await.text(), "/second");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_meeting_a_restart_in_place_waits_through_every_state() {
    let app = App::ok("restarted").await;
    // the node holds the gear's requests and has stopped its app: the
    // gear is `stopped` on the way to `starting`, with the hold's wait in
    // place of a wake-up's
    let wake: harness::WakeFn = Box::new(|gear| {
        Box::pin(async move {
            let rx = gear.front.waking.lock().expect("waking").clone();
            let mut rx = rx.expect("the hold's wait");
            let result = rx.wait_for(Option::is_some).await.expect("sent").clone();
            result.unwrap_or(Ok(()))
        })
    });
    let world = World::new(app.port, GearState::Stopped, wake, limits()).await;
    let (tx, rx) = tokio::sync::watch::channel(None);
    *world.gear.front.waking.lock().expect("waking") = Some(rx);
    world.gear.front.closing.store(true, Ordering::SeqCst);
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        0,
        "held, not passed on"
    );
    // the restart ends: running again, the hold released
    *world.gear.state.lock().expect("state") = GearState::Running;
    world.gear.front.closing.store(false, Ordering::SeqCst);
    *world.gear.front.waking.lock().expect("waking") = None;
    tx.send(Some(Ok(()))).expect("a request waits");
    assert_eq!(c.response(false).await.text(), "restarted");
    world.settle().await;
    assert_eq!(world.gear.front.forwarding.load(Ordering::SeqCst), 0);
}

/// Two apps on a port and on its beside port, for a slot switch; `None`
/// when the beside port is taken on this machine.
async fn two_slots() -> Option<(App, App)> {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = first.local_addr().expect("address").port();
        let beside = gearhost_runtime::manifest::beside_port(port);
        if let Ok(second) = TcpListener::bind(("127.0.0.1", beside)).await {
            let old = App::serve(first, |_| Reply::Send(ok("old")));
            let new = App::serve(second, |_| Reply::Send(ok("new")));
            return Some((old, new));
        }
    }
    None
}

#[tokio::test]
async fn a_slot_switch_sends_new_requests_to_the_app_beside_and_counts_the_old_connections() {
    let (old, new) = two_slots().await.expect("a free pair of ports");
    let world = World::running(&old).await;
    let live = world.gear.front.live.clone();
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.text(), "old");
    world.settle().await;
    // the connection to the old app is pooled, and counted against slot 0
    assert_eq!(live.connections(0), 1);
    live.set(1);
    world.gear.front.clear_pool_of(0);
    assert_eq!(
        live.connections(0),
        0,
        "closing the pool frees the old slot"
    );
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.text(), "new");
    world.settle().await;
    assert_eq!(live.connections(1), 1);
    assert_eq!(old.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(new.accepted.load(Ordering::SeqCst), 1);
    // a connection of the old slot that comes back after the switch is not
    // pooled: the old app can be stopped as soon as its requests are done
    live.set(0);
    c.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(c.response(false).await.text(), "old");
    world.settle().await;
    assert_eq!(
        live.connections(1),
        0,
        "the slot-1 connection was dropped, not reused"
    );
}

// -- sends ---------------------------------------------------------------------

/// With a send batch on the thread (as on a worker where io_uring works), a
/// request served alone sends straight away, and requests served together go
/// through the batch.
#[tokio::test]
async fn a_lone_request_sends_at_once_and_concurrent_ones_are_batched() {
    let batch = crate::frontend::wire::start_batching().expect("io_uring for the send batch");
    let app = App::start(|r| {
        if r.head.starts_with("GET /hang ") {
            Reply::Hang
        } else {
            Reply::Send(ok("here"))
        }
    })
    .await;
    let world = World::running(&app).await;
    let mut alone = world.client().await;
    // one after another: each request ends (and stops counting) before the next
    for _ in 0..3 {
        alone.send(&get("app-ns.gears.test", "/")).await;
        assert_eq!(alone.response(false).await.text(), "here");
    }
    world.settle().await;
    assert_eq!(
        batch.stats().sends,
        0,
        "a lone request's sends went straight out"
    );
    // a request that the app never answers stays in flight
    let mut held = world.client().await;
    held.send(&get("app-ns.gears.test", "/hang")).await;
    within("the held request reaching the app", async {
        while app.seen().len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // so the next one is served beside it: its two sends (to the app, to the
    // client) go through the batch
    alone.send(&get("app-ns.gears.test", "/")).await;
    assert_eq!(alone.response(false).await.text(), "here");
    assert_eq!(batch.stats().sends, 2, "{:?}", batch.stats());
    drop(held);
}
