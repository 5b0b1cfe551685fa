//! The node-to-node wire: a handshake that proves both ends hold the
//! cluster's secret, then frames sealed (encrypted and authenticated) with
//! ChaCha20-Poly1305 under keys of that connection alone, numbered per
//! direction, so a frame cannot be read, forged, altered, replayed, reordered
//! or moved to another connection (requests carry environment values).
//!
//! Handshake: the connecting node sends `GHPEER1\n`, a 32-byte nonce and its
//! node name (a length byte, then the name); the other answers its own nonce.
//! Both derive `key = HMAC-SHA256(secret, "gearhost peer v1" | nonce_c |
//! nonce_s | name)`; the connecting node proves it with `HMAC(key, "client")`,
//! the other answers `HMAC(key, "server")`. Each direction seals with its own
//! key, `HMAC(key, "client to server")` and `HMAC(key, "server to client")`.
//!
//! Frame: `len: u32 BE` (of the sealed payload, tag included), `kind: u8`,
//! the sealed payload; the nonce is the direction's frame number, the header
//! is the associated data.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 8] = b"GHPEER1\n";
/// The largest payload of one frame.
pub const MAX_FRAME: usize = 1 << 20;
const TAG: usize = 16;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The forwarded request: who calls and what they ask (JSON).
    Envelope = 1,
    /// Bytes: a deploy's archive one way, the answer's lines the other.
    Data = 2,
    /// The end of the data in this direction.
    End = 3,
    /// Bytes of a file the request writes for the caller (a snapshot).
    Output = 4,
    /// The end of that file.
    OutputEnd = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Envelope),
            2 => Some(Kind::Data),
            3 => Some(Kind::End),
            4 => Some(Kind::Output),
            5 => Some(Kind::OutputEnd),
            _ => None,
        }
    }
}

fn sign(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for part in parts {
        m.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(m.sign().as_ref());
    out
}

fn derive(secret: &[u8], client: &[u8; 32], server: &[u8; 32], name: &str) -> [u8; 32] {
    sign(
        secret,
        &[b"gearhost peer v1", client, server, name.as_bytes()],
    )
}

fn proof(key: &[u8; 32], role: &[u8]) -> [u8; 32] {
    sign(key, &[role])
}

fn verify(key: &[u8; 32], role: &[u8], got: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), role, got).is_ok()
}

/// The sealing key of one direction of a session.
fn direction_key(key: &[u8; 32], direction: &[u8]) -> LessSafeKey {
    let bytes = sign(key, &[direction]);
    // a 32-byte key is what ChaCha20-Poly1305 takes
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).unwrap_or_else(|_| unreachable!()))
}

fn nonce() -> std::io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut n)?;
    Ok(n)
}

fn refused(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, what.to_string())
}

/// One sealed direction of a connection.
pub struct Sealer {
    key: LessSafeKey,
    sequence: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    fn new(key: LessSafeKey) -> Sealer {
        Sealer { key, sequence: 0 }
    }

    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.sequence.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Writes `payload` as frames of `kind` (one frame for an empty payload).
    pub async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        kind: Kind,
        payload: &[u8],
    ) -> std::io::Result<()> {
        for chunk in payload
            .chunks(MAX_FRAME)
            .chain(payload.is_empty().then_some(&[][..]))
        {
            let mut frame = Vec::with_capacity(5 + chunk.len() + TAG);
            frame.extend_from_slice(&((chunk.len() + TAG) as u32).to_be_bytes());
            frame.push(kind as u8);
            let mut sealed = chunk.to_vec();
            self.key
                .seal_in_place_append_tag(self.nonce(), Aad::from(&frame[..5]), &mut sealed)
                .map_err(|_| refused("a frame could not be sealed"))?;
            frame.extend_from_slice(&sealed);
            w.write_all(&frame).await?;
            self.sequence += 1;
        }
        w.flush().await
    }

    /// Reads one frame; one that was altered, forged or is out of its place
    /// is an error.
    pub async fn receive<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> std::io::Result<(Kind, Vec<u8>)> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !(TAG..=MAX_FRAME + TAG).contains(&len) {
            return Err(refused("a peer frame of an impossible size"));
        }
        let mut sealed = vec![0u8; len];
        r.read_exact(&mut sealed).await?;
        let plain = self
            .key
            .open_in_place(self.nonce(), Aad::from(&head), &mut sealed)
            .map_err(|_| refused("a peer frame failed its check (altered, replayed or forged)"))?
            .len();
        sealed.truncate(plain);
        self.sequence += 1;
        let kind =
            Kind::from_byte(head[4]).ok_or_else(|| refused("a peer frame of no known kind"))?;
        Ok((kind, sealed))
    }
}

/// Both directions of an authenticated connection: what this end sends and
/// what it receives.
#[derive(Debug)]
pub struct Session {
    /// Frames this end writes.
    pub out: Sealer,
    /// Frames this end reads.
    pub inn: Sealer,
    /// The other node's name (as it said; proven by the secret it holds).
    pub peer: String,
}

/// The connecting side of the handshake, as node `name`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
    name: &str,
) -> std::io::Result<Session> {
    let client = nonce()?;
    let mut hello = Vec::with_capacity(8 + 32 + 1 + name.len());
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&client);
    hello.push(u8::try_from(name.len()).map_err(|_| refused("node name too long"))?);
    hello.extend_from_slice(name.as_bytes());
    s.write_all(&hello).await?;
    let mut server = [0u8; 32];
    s.read_exact(&mut server).await?;
    let key = derive(secret, &client, &server, name);
    s.write_all(&proof(&key, b"client")).await?;
    let mut theirs = [0u8; 32];
    s.read_exact(&mut theirs).await?;
    if !verify(&key, b"server", &theirs) {
        return Err(refused(
            "the other node does not hold this cluster's secret (cluster.secret-file differs)",
        ));
    }
    Ok(Session {
        out: Sealer::new(direction_key(&key, b"client to server")),
        inn: Sealer::new(direction_key(&key, b"server to client")),
        peer: String::new(),
    })
}

/// The accepting side of the handshake.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
) -> std::io::Result<Session> {
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(refused("not a gearhost node (or another protocol version)"));
    }
    let mut client = [0u8; 32];
    s.read_exact(&mut client).await?;
    let mut len = [0u8; 1];
    s.read_exact(&mut len).await?;
    let mut name = vec![0u8; usize::from(len[0])];
    s.read_exact(&mut name).await?;
    let name = String::from_utf8(name).map_err(|_| refused("a node name that is not UTF-8"))?;
    let server = nonce()?;
    s.write_all(&server).await?;
    let key = derive(secret, &client, &server, &name);
    let mut theirs = [0u8; 32];
    s.read_exact(&mut theirs).await?;
    if !verify(&key, b"client", &theirs) {
        return Err(refused(
            "the connecting node does not hold this cluster's secret",
        ));
    }
    s.write_all(&proof(&key, b"server")).await?;
    Ok(Session {
        out: Sealer::new(direction_key(&key, b"server to client")),
        inn: Sealer::new(direction_key(&key, b"client to server")),
        peer: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_prove_the_secret_and_frames_pass_in_order() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = accept(&mut b, b"0123456789abcdef0123456789abcdef").await?;
            let (kind, payload) = s.inn.receive(&mut b).await?;
            s.out.send(&mut b, Kind::Data, &payload).await?;
            Ok::<_, std::io::Error>((s.peer, kind))
        });
        let mut c = connect(&mut a, b"0123456789abcdef0123456789abcdef", "node-a")
            .await
            .expect("handshake");
        c.out
            .send(&mut a, Kind::Envelope, b"{\"x\":1}")
            .await
            .expect("send");
        let (kind, echoed) = c.inn.receive(&mut a).await.expect("receive");
        assert_eq!((kind, echoed.as_slice()), (Kind::Data, &b"{\"x\":1}"[..]));
        let (peer, kind) = server.await.expect("join").expect("server");
        assert_eq!((peer.as_str(), kind), ("node-a", Kind::Envelope));
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_by_both_ends() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let server =
            tokio::spawn(async move { accept(&mut b, b"the-right-secret-of-32-bytes-xxx").await });
        let client = connect(&mut a, b"a-wrong-secret-of-32-bytes-xxxxx", "node-a").await;
        let server = server.await.expect("join");
        assert!(server.is_err(), "the server accepted a wrong secret");
        assert!(client.is_err(), "the client went on");
    }

    #[tokio::test]
    async fn frames_are_sealed_and_an_altered_or_replayed_one_is_refused() {
        let key = [7u8; 32];
        let sealer = || Sealer::new(direction_key(&key, b"client to server"));
        let mut out = sealer();
        let mut wire = Vec::new();
        out.send(&mut wire, Kind::Data, b"GEARHOST_SECRET=hunter2")
            .await
            .expect("send");
        // what travels does not show the payload
        assert!(!wire.windows(7).any(|w| w == b"hunter2"));
        // altered
        let mut bad = wire.clone();
        bad[8] ^= 1;
        assert!(sealer().receive(&mut bad.as_slice()).await.is_err());
        // the other direction's key cannot open it
        let mut other = Sealer::new(direction_key(&key, b"server to client"));
        assert!(other.receive(&mut wire.as_slice()).await.is_err());
        // replayed: the second copy has the wrong frame number
        let mut inn = sealer();
        let twice = [wire.clone(), wire].concat();
        let mut r = twice.as_slice();
        let (kind, plain) = inn.receive(&mut r).await.expect("first");
        assert_eq!(
            (kind, plain.as_slice()),
            (Kind::Data, &b"GEARHOST_SECRET=hunter2"[..])
        );
        assert!(inn.receive(&mut r).await.is_err());
    }
}
