//! HTTP/2 streams through the pipeline: a real HTTP/2 client (the `h2`
//! crate's) on loopback, the frontend's HTTP/2 server (`super::super::
//! super::http2`, without TLS here: ALPN chose it in the node), and the
//! pipeline's test backend and apps behind it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::Request;
use tokio::net::{TcpListener, TcpStream};

use super::harness::{App, Reply, World, limits, no_wake, ok, wakes_after, within};
use crate::frontend::backend::{BackendGear, Limits};
use crate::frontend::metrics::Refusal;
use crate::state::GearState;

/// An HTTP/2 listener serving `world`'s node, and a client connected to it.
async fn client(world: &World) -> SendRequest<Bytes> {
    client_with(world, h2::client::Builder::new()).await
}

/// [`client`], the client's settings made by `builder`.
pub(super) async fn client_with(world: &World, builder: h2::client::Builder) -> SendRequest<Bytes> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let node = world.node.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(crate::frontend::http2::serve(node.clone(), stream, peer));
        }
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = builder.handshake(tcp).await.expect("an HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends `request` (with `body`, if any) and reads the whole answer.
async fn fetch(
    send: &SendRequest<Bytes>,
    request: Request<()>,
    body: Option<Vec<Bytes>>,
) -> (http::response::Parts, Vec<u8>) {
    let mut send = send.clone().ready().await.expect("ready");
    let (response, mut up) = send
        .send_request(request, body.is_none())
        .expect("a stream");
    if let Some(chunks) = body {
        tokio::spawn(async move {
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                up.reserve_capacity(chunk.len());
                if up.send_data(chunk, i + 1 == n).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let response = within("an HTTP/2 response", response)
        .await
        .expect("a response");
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = within("a body", body.data()).await {
        let chunk = chunk.expect("body data");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (parts, bytes)
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("https://app-ns.gears.test{path}"))
        .header("user-agent", "h2-test/1")
        .body(())
        .expect("request")
}

#[tokio::test]
async fn a_stream_is_routed_forwarded_as_https_and_logged_as_http2() {
    let app = App::start(|r| {
        let proto = r.field("x-forwarded-proto").unwrap_or("").to_string();
        Reply::Send(ok(&proto))
    })
    .await;
    let world = World::running(&app).await;
    let send = client(&world).await;
    let (parts, body) = fetch(&send, get("/a?b=c"), None).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, b"https");
    let seen = app.seen();
    assert!(
        seen[0].head.starts_with("GET /a?b=c HTTP/1.1\r\n"),
        "{}",
        seen[0].head
    );
    assert_eq!(seen[0].field("host"), Some("app-ns.gears.test"));
    let log = world.access_log().await;
    assert!(
        log[0].contains("\"GET /a?b=c HTTP/2.0\" 200 5 "),
        "{}",
        log[0]
    );
    assert!(log[0].ends_with("\"h2-test/1\""), "{}", log[0]);
}

#[tokio::test]
async fn a_chunked_download_of_megabytes_arrives_whole() {
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in data.chunks(100_000) {
        answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        answer.extend_from_slice(piece);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    let app = App::start(move |_| Reply::Send(answer.clone())).await;
    let world = World::running(&app).await;
    let send = client(&world).await;
    let (parts, body) = fetch(&send, get("/big"), None).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.get("transfer-encoding").is_none());
    assert_eq!(body.len(), data.len());
    assert!(body == data, "the body changed on its way");
}

#[tokio::test]
async fn an_upload_of_no_declared_length_goes_up_chunked_and_one_too_large_gets_413() {
    let app = App::start(|r| Reply::Send(ok(&r.body.len().to_string()))).await;
    let limits = Limits {
        max_body: 10_000,
        ..limits()
    };
    let world = World::new(app.port, GearState::Running, no_wake(), limits).await;
    let send = client(&world).await;
    let post = || {
        Request::post("https://app-ns.gears.test/up")
            .body(())
            .expect("request")
    };
    let chunks = vec![Bytes::from(vec![b'a'; 3000]), Bytes::from(vec![b'b'; 3000])];
    let (parts, _) = fetch(&send, post(), Some(chunks)).await;
    assert_eq!(parts.status, 200);
    let seen = app.seen();
    assert_eq!(seen[0].field("transfer-encoding"), Some("chunked"));
    // the app got it as it came: two chunks and the last one
    assert_eq!(seen[0].body.len(), 6000 + 2 * (3 + 2 + 2) + 5);
    // past the limit: 413, and nothing more goes up
    let chunks = (0..8).map(|_| Bytes::from(vec![b'c'; 2000])).collect();
    let (parts, body) = fetch(&send, post(), Some(chunks)).await;
    assert_eq!(parts.status, 413);
    assert!(String::from_utf8_lossy(&body).contains("at most 10000 bytes"));
    assert_eq!(world.gear.front.stats.refusals(Refusal::TooLarge), 1);
    // the connection goes on serving
    let (parts, _) = fetch(&send, get("/after"), None).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test]
async fn a_stream_for_an_idle_gear_is_held_until_it_wakes() {
    let app = App::ok("awake").await;
    let world = World::new(
        app.port,
        GearState::Idle,
        wakes_after(Duration::from_millis(300)),
        limits(),
    )
    .await;
    let send = client(&world).await;
    let start = Instant::now();
    let (parts, body) = fetch(&send, get("/"), None).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, b"awake");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(world.gear.state(), GearState::Running);
}

#[tokio::test]
async fn concurrent_streams_share_one_connection() {
    let app = App::start(|r| {
        let path = r.head.split(' ').nth(1).unwrap_or("").to_string();
        Reply::Send(ok(&path))
    })
    .await;
    let world = World::running(&app).await;
    let send = client(&world).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let (parts, body) = fetch(&send, get(&format!("/{i}")), None).await;
            assert_eq!(parts.status, 200);
            assert_eq!(body, format!("/{i}").into_bytes());
        }));
    }
    for t in tasks {
        t.await.expect("a stream");
    }
    assert_eq!(
        world.node.frontend.connections_total.load(Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn a_rapid_reset_flood_drops_its_work_and_closes_the_connection() {
    // the app never answers: only the resets can end the streams' work
    let app = App::start(|_| Reply::Hang).await;
    let limits = Limits {
        response_timeout: Duration::from_secs(600),
        ..limits()
    };
    let world = World::new(app.port, GearState::Running, no_wake(), limits).await;
    let send = client(&world).await;
    let flood = async {
        let mut sent = 0usize;
        loop {
            let Ok(mut ready) = send.clone().ready().await else {
                return (sent, true);
            };
            match ready.send_request(get("/"), true) {
                // dropped at once: the client cancels the stream (RST_STREAM)
                Ok((response, _)) => drop(response),
                Err(_) => return (sent, true),
            }
            sent += 1;
            if sent.is_multiple_of(20) {
                tokio::task::yield_now().await;
            }
            if sent > 20_000 {
                return (sent, false);
            }
        }
    };
    let (sent, closed) = within("the flood to end", flood).await;
    assert!(closed, "the node took {sent} reset streams without closing");
    assert!(sent < 5_000, "{sent} streams before the close");
    // the work of the reset streams is gone: none is in flight any more
    world.settle().await;
    assert_eq!(
        world.gear.front.active.load(Ordering::SeqCst),
        0,
        "requests still in flight"
    );
    // and other clients are served
    let app2_world = World::running(&App::ok("still").await).await;
    let (parts, _) = fetch(&client(&app2_world).await, get("/"), None).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431_and_a_slow_gear_504_over_http2() {
    let app = App::start(|r| {
        if r.head.starts_with("GET /slow ") {
            Reply::Hang
        } else {
            Reply::Send(ok("fine"))
        }
    })
    .await;
    let limits = Limits {
        response_timeout: Duration::from_millis(500),
        ..limits()
    };
    let world = World::new(app.port, GearState::Running, no_wake(), limits).await;
    let send = client(&world).await;
    // the pipeline's head limit holds for the head a stream becomes
    let big = Request::get("https://app-ns.gears.test/")
        .header("x-big", "a".repeat(70 * 1024))
        .body(())
        .expect("request");
    let (parts, _) = fetch(&send, big, None).await;
    assert_eq!(parts.status, 431);
    // and so does its limit on the number of fields, small as they are
    let mut many = Request::get("https://app-ns.gears.test/");
    for i in 0..gearhost_http::head::MAX_REQUEST_HEADERS {
        many = many.header(format!("x-f{i}"), "v");
    }
    let (parts, _) = fetch(&send, many.body(()).expect("request"), None).await;
    assert_eq!(parts.status, 431, "one field (host) past the limit");
    // the response timeout too
    let start = Instant::now();
    let (parts, _) = fetch(&send, get("/slow"), None).await;
    assert_eq!(parts.status, 504);
    assert!(start.elapsed() >= Duration::from_millis(500));
    // and the connection goes on
    let (parts, body) = fetch(&send, get("/"), None).await;
    assert_eq!(
        (parts.status, body.as_slice()),
        (http::StatusCode::OK, &b"fine"[..])
    );
    assert!(app.seen().iter().all(|m| m.field("x-big").is_none()));
}

/// Sends `request` and reads its answer until the stream ends: the status
/// (none when the stream was reset before its head), the body's bytes, and
/// whether it ended whole (not reset).
async fn fetch_to_end(
    send: &SendRequest<Bytes>,
    request: Request<()>,
) -> (Option<u16>, Vec<u8>, bool) {
    let mut send = send.clone().ready().await.expect("ready");
    let (response, _) = send.send_request(request, true).expect("a stream");
    let Ok(response) = within("an HTTP/2 response", response).await else {
        return (None, Vec::new(), false);
    };
    let status = Some(response.status().as_u16());
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = within("a body", body.data()).await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            Err(_) => return (status, bytes, false),
        }
    }
    (status, bytes, true)
}

#[tokio::test]
async fn an_answer_cut_short_is_reset_and_one_ended_by_the_close_ends_whole() {
    let app = App::start(|r| {
        let path = r.head.split(' ').nth(1).unwrap_or("").to_string();
        let mut answer = match path.as_str() {
            "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec(),
            "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n32\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        };
        answer.extend_from_slice(&[b'x'; 50]);
        Reply::Last(answer)
    })
    .await;
    let world = World::running(&app).await;
    let send = client(&world).await;
    // a stated length the gear does not keep to, and a chunked body
    // without its last chunk: the stream is reset (before or after its
    // head went out), never ended as if the answer were whole
    for path in ["/length", "/chunked"] {
        let (status, body, whole) = fetch_to_end(&send, get(path)).await;
        assert!(
            !whole,
            "{path}: a cut answer ended as if whole ({status:?}, {} bytes)",
            body.len()
        );
    }
    // no length: the gear's close ends the answer, and the stream with it
    let (status, body, whole) = fetch_to_end(&send, get("/close")).await;
    assert_eq!(status, Some(200));
    assert!(whole, "an answer ended by the close was reset");
    assert_eq!(body, vec![b'x'; 50]);
    // the connection goes on
    let (status, _, whole) = fetch_to_end(&send, get("/close")).await;
    assert!(status == Some(200) && whole);
}

/// The next informational (1xx) response of a stream.
async fn informational(response: &mut h2::client::ResponseFuture) -> http::Response<()> {
    within(
        "an informational response",
        std::future::poll_fn(|cx| response.poll_informational(cx)),
    )
    .await
    .expect("one")
    .expect("no error")
}

/// The final response's status and its first DATA frame.
async fn first_data(response: h2::client::ResponseFuture) -> (http::StatusCode, Bytes) {
    let (parts, mut body) = within("the response", response)
        .await
        .expect("a response")
        .into_parts();
    let data = within("its body", body.data())
        .await
        .expect("data")
        .expect("no error");
    (parts.status, data)
}

#[tokio::test]
async fn an_interim_answer_passes_as_an_informational_response() {
    let app = App::start(|_| {
        Reply::Send(
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        )
    })
    .await;
    let world = World::running(&app).await;
    let send = client(&world).await;
    let mut send = send.ready().await.expect("ready");
    let (mut response, _) = send.send_request(get("/"), true).expect("a stream");
    let interim = informational(&mut response).await;
    assert_eq!(interim.status(), 103);
    assert_eq!(interim.headers()["link"], "</s.css>; rel=preload");
    let (status, data) = first_data(response).await;
    assert_eq!(status, 200);
    assert_eq!(&data[..], b"ok");
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_before_sending_its_body() {
    let app = App::start(|r| Reply::Send(ok(&r.body.len().to_string()))).await;
    let world = World::running(&app).await;
    let send = client(&world).await;
    let mut send = send.ready().await.expect("ready");
    let request = Request::post("https://app-ns.gears.test/up")
        .header("expect", "100-continue")
        .header("content-length", "5")
        .body(())
        .expect("request");
    let (mut response, mut up) = send.send_request(request, false).expect("a stream");
    // nothing of the body is sent before the node says to go on
    let interim = informational(&mut response).await;
    assert_eq!(interim.status(), 100);
    up.send_data(Bytes::from_static(b"hello"), true)
        .expect("the body");
    let (status, data) = first_data(response).await;
    assert_eq!(status, 200);
    assert_eq!(&data[..], b"5");
}
