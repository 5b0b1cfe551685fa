//! The send deadline through the whole pipeline: a client that stops
//! reading is cut off and lets go of the gear's connection; one that reads
//! slowly is not; over HTTP/2 a stream whose window is never opened is
//! reset and the connection's other streams go on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::harness::{World, closed_port, get, limits, no_wake, within};
use crate::frontend::backend::Limits;
use crate::state::GearState;

/// What the gear did with one connection: the path it was asked for, the
/// answer bytes it wrote, and whether the connection broke under a write.
#[derive(Debug)]
struct Served {
    path: String,
    written: usize,
    broke: bool,
}

/// A gear that answers `/big` with `big` bytes and anything else with a
/// short answer, one request per connection, and reports each connection.
async fn streaming_gear(big: usize) -> (u16, mpsc::UnboundedReceiver<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(answer(stream, big).await);
            });
        }
    });
    (port, rx)
}

async fn answer(mut stream: TcpStream, big: usize) -> Served {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let size = if path == "/big" { big } else { 5 };
    let mut served = Served {
        path,
        written: 0,
        broke: false,
    };
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        served.broke = true;
        return served;
    }
    let piece = vec![b'x'; 64 * 1024];
    while served.written < size {
        let n = piece.len().min(size - served.written);
        if stream.write_all(&piece[..n]).await.is_err() {
            served.broke = true;
            return served;
        }
        served.written += n;
    }
    served
}

fn stalling_limits(send_timeout: Duration) -> Limits {
    Limits {
        send_timeout,
        ..limits()
    }
}

/// More than every socket buffer between the gear and the client holds.
const BIG: usize = 64 << 20;

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_the_gear_connection_let_go() {
    let (port, mut served) = streaming_gear(BIG).await;
    let limits = stalling_limits(Duration::from_millis(500));
    let world = World::new(port, GearState::Running, no_wake(), limits).await;
    let mut c = world.client().await;
    c.send(&get("app-ns.gears.test", "/big")).await;
    // the client reads nothing: the frontend gives up on it and closes the
    // gear's connection, whose next writes fail
    let gear = within("the gear's connection to break", served.recv())
        .await
        .expect("the gear served the request");
    assert_eq!(gear.path, "/big");
    assert!(
        gear.broke && gear.written < BIG,
        "the gear wrote {} bytes of {BIG} and its connection held",
        gear.written
    );
    // what was on its way arrives, then the connection ends short of the body
    let got = within("the cut connection", c.until_close()).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(got.len() < BIG, "the whole body arrived");
    assert_eq!(world.node.frontend.send_stalls.load(Ordering::SeqCst), 1);
    world.settle().await;
    assert_eq!(
        world.gear.front.pooled(),
        0,
        "a cut connection is not pooled"
    );
    let log = world.access_log().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("\"GET /big HTTP/1.1\" 200 "), "{}", log[0]);
}

#[tokio::test]
async fn a_client_that_reads_slowly_but_steadily_gets_everything() {
    const SIZE: usize = 8 << 20;
    let (port, mut served) = streaming_gear(SIZE).await;
    // each pause is a tenth of the deadline
    let limits = stalling_limits(Duration::from_secs(2));
    let world = World::new(port, GearState::Running, no_wake(), limits).await;
    let mut stream = TcpStream::connect(world.addr).await.expect("connect");
    let request = "GET /big HTTP/1.1\r\nHost: app-ns.gears.test\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut got = 0usize;
    let mut piece = vec![0u8; 512 * 1024];
    let reading = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut read = 0;
            while read < piece.len() {
                match stream.read(&mut piece[read..]).await.expect("read") {
                    0 => return,
                    n => {
                        read += n;
                        got += n;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the download ends");
    let gear = served.recv().await.expect("the gear served the request");
    assert!(!gear.broke, "{gear:?}");
    assert_eq!(gear.written, SIZE);
    // the head and the whole body: nothing was cut
    assert!(got > SIZE, "{got} bytes");
    assert_eq!(world.node.frontend.send_stalls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_reset_and_the_others_go_on() {
    let (port, mut served) = streaming_gear(BIG).await;
    let limits = stalling_limits(Duration::from_millis(500));
    let world = World::new(port, GearState::Running, no_wake(), limits).await;
    // each stream may be sent 64 KiB until the client opens its window, the
    // connection a lot more: only the stream that is not read stalls
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(65_535)
        .initial_connection_window_size(64 << 20);
    let send = super::http2::client_with(&world, builder).await;
    let request = |path: &str| {
        Request::get(format!("https://app-ns.gears.test{path}"))
            .body(())
            .expect("request")
    };
    let mut send = send.ready().await.expect("ready");
    let (big, _) = send.send_request(request("/big"), true).expect("a stream");
    let big = within("the big answer's head", big)
        .await
        .expect("a response");
    assert_eq!(big.status(), 200);
    // nothing of it is taken: its gear connection breaks once the deadline passes
    let gear = within("the gear's connection to break", served.recv())
        .await
        .expect("the gear served the request");
    assert!(gear.path == "/big" && gear.broke, "{gear:?}");
    // the stream was reset after what its window let through
    let mut body = big.into_body();
    let mut got = 0;
    let ended = loop {
        match within("the big body", body.data()).await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("the stalled stream ended as if whole after {got} bytes"),
        }
    };
    assert!(ended.is_reset(), "{ended}");
    assert!(got <= 65_535, "{got} bytes past the window");
    assert_eq!(world.node.frontend.send_stalls.load(Ordering::SeqCst), 1);
    // the connection goes on
    let mut send = send.ready().await.expect("ready");
    let (small, _) = send
        .send_request(request("/small"), true)
        .expect("a stream");
    let small = within("a second answer", small).await.expect("a response");
    assert_eq!(small.status(), 200);
    let mut body = small.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = within("the small body", body.data()).await {
        bytes.extend_from_slice(&chunk.expect("body data"));
    }
    assert_eq!(bytes, b"xxxxx");
}

#[tokio::test]
async fn a_client_that_pipelines_requests_and_reads_no_answer_is_cut_off() {
    // the frontend's own pages go under the deadline too: requests for a
    // name nobody serves, sent without end and never read
    let limits = stalling_limits(Duration::from_millis(300));
    let world = World::new(closed_port().await, GearState::Running, no_wake(), limits).await;
    let mut stream = TcpStream::connect(world.addr).await.expect("connect");
    let request = get("nobody.gears.test", "/");
    let writing = async {
        let mut sent = 0u64;
        while stream.write_all(&request).await.is_ok() {
            sent += 1;
        }
        sent
    };
    let sent = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("the frontend cuts the connection off");
    assert!(sent > 1000, "only {sent} requests went");
    assert_eq!(world.node.frontend.send_stalls.load(Ordering::SeqCst), 1);
}
