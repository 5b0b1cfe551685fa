//! The node API client: find the node's socket, send one request, relay the
//! node's progress events, and turn its answer into a result with the right
//! exit-code class.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use gearhost_api::{ErrorKind, Event, GearRef, Op, Reply, Request};

use crate::Failure;

/// How to reach the node.
///
/// `--socket` and `-N/--namespace` are global options of [`crate::Cli`], so
/// they are accepted before the subcommand as well as after it. A command
/// that flattens this struct (or [`GearArg`]) defines the same argument ids
/// again: clap then does not copy the global definition into that command,
/// and it fills the command's field from wherever the option was given (the
/// command line beats the environment, which beats the default). The ids,
/// names and environment variables must therefore stay the same here, in
/// [`GearArg`], in `gear list` and `gear link`, and on `Cli`.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's API socket.
    #[arg(long, global = true, env = "GEARHOST_SOCKET", default_value = gearhost_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// A gear as named on the command line. Its `-N` is global like `Cli`'s
/// (see [`Target`]), so that it is also taken after a subcommand of the
/// command (`gear env web list -N team`).
#[derive(Debug, Clone, clap::Args)]
pub struct GearArg {
    /// The gear's name.
    pub name: String,
    /// The gear's namespace (default: your user name; root's is `default`).
    #[arg(
        long,
        short = 'N',
        global = true,
        env = "GEARHOST_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
}

/// The user an ssh session acts for (see `gear ssh-session`), once set.
static SSH_USER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The environment variable through which an ssh session tells the
/// programs it starts (git and its hooks) whom they act for.
pub const SSH_USER_ENV: &str = "GEARHOST_SSH_USER";

/// Act for `user` from now on: the node's ssh endpoint's session does, and
/// the node believes it only from the endpoint's account.
pub fn act_for(user: &str) {
    let _ = SSH_USER.set(user.to_string());
}

/// The user requests are sent for, when this is an ssh session or a
/// program one started.
pub fn acting_for() -> Option<String> {
    SSH_USER
        .get()
        .cloned()
        .or_else(|| std::env::var(SSH_USER_ENV).ok().filter(|u| !u.is_empty()))
}

/// The namespace a command acts in when none is given: the caller's own,
/// named after its user (root's is `default`, where gears made before
/// namespaces had owners live).
pub fn default_namespace() -> String {
    if let Some(user) = acting_for() {
        return if user == "root" {
            "default".to_string()
        } else {
            user
        };
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return "default".to_string();
    }
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid-{uid}"),
    }
}

/// The arguments of a command that acts on one gear and prints what came of
/// it: the gear, how to reach the node, and `--json`.
#[derive(Debug, clap::Args)]
pub struct OneGear {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl GearArg {
    /// As the API names it.
    pub fn to_ref(&self) -> GearRef {
        GearRef {
            name: self.name.clone(),
            namespace: self.namespace(),
        }
    }

    /// The namespace given, or the caller's own.
    pub fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(default_namespace)
    }
}

fn connect(target: &Target) -> Result<UnixStream, Failure> {
    UnixStream::connect(&target.socket).map_err(|e| {
        let advice = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "no node is running at {}; start one with `sudo gear node run` (or point --socket / GEARHOST_SOCKET at a running node)",
                target.socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied on {}; the node serves the members of its users group: ask an operator to add you",
                target.socket.display()
            ),
            _ => format!("cannot reach the node at {}: {e}", target.socket.display()),
        };
        Failure::Environment(anyhow::anyhow!(advice))
    })
}

fn map_error(e: gearhost_api::ApiError) -> Failure {
    let err = anyhow::anyhow!(e.message);
    match e.kind {
        ErrorKind::Invalid | ErrorKind::NotFound => Failure::Invalid(err),
        ErrorKind::Denied => Failure::Environment(err),
        ErrorKind::Conflict | ErrorKind::Failed => Failure::Failed(err),
    }
}

/// Send operation `op` and wait for its answer; each event is handed to
/// `on_event` as it arrives.
pub fn call_with<O: Op>(
    target: &Target,
    op: O,
    mut on_event: impl FnMut(&Event),
) -> Result<O::Reply, Failure> {
    let stream = connect(target)?;
    send(&stream, &op.into(), &[])?;
    let value = read_replies(stream, &mut on_event)?;
    decode::<O>(value)
}

/// [`call`] for an answer that may be large (`gear list` of ten thousand
/// gears, a few MiB): the answer is decoded from its line straight into its
/// type, without the JSON tree [`call`] makes first (which costs more than
/// the rest of the command). A line that does not decode so goes the usual
/// way, which says what is wrong with it.
pub fn call_large<O: Op>(target: &Target, op: O) -> Result<O::Reply, Failure> {
    let stream = connect(target)?;
    send(&stream, &op.into(), &[])?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| {
            Failure::Environment(anyhow::anyhow!("the connection to the node broke: {e}"))
        })?;
        if read == 0 {
            return Err(closed_without_answer());
        }
        let reply = match serde_json::from_str::<TypedReply<O::Reply>>(&line) {
            Ok(TypedReply::Ok(answer)) => return Ok(answer),
            Ok(TypedReply::Event(event)) => Reply::Event(event),
            Ok(TypedReply::Error(e)) => Reply::Error(e),
            Err(_) => Reply::decode(line.trim_end()).map_err(|e| Failure::Failed(e.into()))?,
        };
        match reply {
            Reply::Event(event) => show_event(&event),
            Reply::Ok(value) => return decode::<O>(value),
            Reply::Error(e) => return Err(map_error(e)),
        }
    }
}

/// A reply line ([`Reply`]) whose answer is decoded as `T` straight away.
#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum TypedReply<T> {
    Event(Event),
    Ok(T),
    Error(gearhost_api::ApiError),
}

/// Send operation `op` with progress shown on stderr.
pub fn call<O: Op>(target: &Target, op: O) -> Result<O::Reply, Failure> {
    call_with(target, op, show_event)
}

/// Send operation `op` with the caller's stdin, stdout and stderr attached,
/// and `resized` (a pipe that gets a byte when this terminal changes size)
/// if given.
pub fn call_attached<O: Op>(
    target: &Target,
    op: O,
    resized: Option<&std::fs::File>,
) -> Result<O::Reply, Failure> {
    let stream = connect(target)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut fds = vec![stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    fds.extend(resized.map(|f| f.as_fd()));
    send(&stream, &op.into(), &fds)?;
    let value = read_replies(stream, &mut show_event)?;
    decode::<O>(value)
}

/// Send operation `op` with the read end of a pipe passed alongside it, and
/// run `produce` on a thread of its own to write on the pipe's other end
/// while the node reads and answers (a deploy's sources, as a tar archive).
/// When both fail, the producer's refusal of its input (an `Invalid`
/// failure: a file the caller cannot read, a FIFO) is the one reported: the
/// node only saw the stream stop.
pub fn call_streaming<O: Op>(
    target: &Target,
    op: O,
    produce: impl FnOnce(std::io::PipeWriter) -> Result<(), Failure> + Send + 'static,
) -> Result<O::Reply, Failure> {
    call_streaming_with(target, op, produce, show_event)
}

/// A producer for [`call_streaming`] that copies `input` to the node as it is. A write refused
/// because the node closed its end (it stopped reading: at the archive's end, which may come
/// before the sender's last padding, or on an error) is no failure of the copy: the node's
/// answer says whether what it read was enough. Any other error is the copy's own.
pub fn pass_on(
    mut input: impl std::io::Read,
    mut pipe: std::io::PipeWriter,
) -> Result<(), Failure> {
    match std::io::copy(&mut input, &mut pipe) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Failed(anyhow::anyhow!(
            "cannot pass the archive on: {e}"
        ))),
    }
}

/// [`call_streaming`], with each event handed to `on_event` as it arrives.
pub fn call_streaming_with<O: Op>(
    target: &Target,
    op: O,
    produce: impl FnOnce(std::io::PipeWriter) -> Result<(), Failure> + Send + 'static,
    mut on_event: impl FnMut(&Event),
) -> Result<O::Reply, Failure> {
    let stream = connect(target)?;
    let (read, write) = std::io::pipe().map_err(|e| {
        Failure::Environment(anyhow::anyhow!("cannot make a pipe for the sources: {e}"))
    })?;
    let producer = std::thread::spawn(move || produce(write));
    let sent = send(&stream, &op.into(), &[read.as_fd()]);
    // the node holds its own copy now; with ours gone, the producer's writes
    // fail as soon as the node stops reading
    drop(read);
    let answer = sent.and_then(|()| read_replies(stream, &mut on_event));
    let produced = producer.join().unwrap_or_else(|_| {
        Err(Failure::Failed(anyhow::anyhow!(
            "the thread writing the sources failed"
        )))
    });
    match (answer, produced) {
        (_, Err(refused @ Failure::Invalid(_))) => Err(refused),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(value), Ok(())) => decode::<O>(value),
    }
}

/// Send operation `op` with the write end of a pipe passed alongside it, and
/// run `consume` on a thread of its own on the pipe's read end while the node
/// writes and answers (a snapshot's archive). The node's error, when it
/// fails, is the one reported; else what the consumer failed at.
pub fn call_receiving<O: Op, T: Send + 'static>(
    target: &Target,
    op: O,
    consume: impl FnOnce(std::io::PipeReader) -> Result<T, Failure> + Send + 'static,
) -> Result<(O::Reply, T), Failure> {
    let stream = connect(target)?;
    let (read, write) = std::io::pipe().map_err(|e| {
        Failure::Environment(anyhow::anyhow!("cannot make a pipe for the archive: {e}"))
    })?;
    let consumer = std::thread::spawn(move || consume(read));
    let sent = send(&stream, &op.into(), &[write.as_fd()]);
    // the node holds its own copy now; with ours gone, the consumer sees the
    // end of the stream when the node closes it
    drop(write);
    let answer = sent.and_then(|()| read_replies(stream, &mut show_event));
    let consumed = consumer.join().unwrap_or_else(|_| {
        Err(Failure::Failed(anyhow::anyhow!(
            "the thread reading the archive failed"
        )))
    });
    match (answer, consumed) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(value), Ok(got)) => Ok((decode::<O>(value)?, got)),
    }
}

/// Progress on stderr, indented; log lines on stdout.
pub fn show_event(event: &Event) {
    match event {
        Event::Progress(text) => eprintln!("  {text}"),
        Event::Line(text) => println!("{text}"),
    }
}

fn decode<O: Op>(value: serde_json::Value) -> Result<O::Reply, Failure> {
    gearhost_api::decode_answer::<O>(value).map_err(|e| Failure::Failed(anyhow::anyhow!(e)))
}

fn send(
    stream: &UnixStream,
    request: &Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), Failure> {
    let line = gearhost_api::encode_request_as(request, acting_for().as_deref());
    gearhost_sys::fdpass::send_with_fds(stream, &line, fds).map_err(|e| {
        Failure::Environment(anyhow::anyhow!("cannot send the request to the node: {e}"))
    })?;
    let mut s = stream;
    s.flush().map_err(|e| Failure::Environment(e.into()))
}

fn read_replies(
    stream: UnixStream,
    on_event: &mut dyn FnMut(&Event),
) -> Result<serde_json::Value, Failure> {
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| {
            Failure::Environment(anyhow::anyhow!("the connection to the node broke: {e}"))
        })?;
        match Reply::decode(&line).map_err(|e| Failure::Failed(anyhow::anyhow!(e)))? {
            Reply::Event(event) => on_event(&event),
            Reply::Ok(value) => return Ok(value),
            Reply::Error(e) => return Err(map_error(e)),
        }
    }
    Err(closed_without_answer())
}

fn closed_without_answer() -> Failure {
    Failure::Failed(anyhow::anyhow!(
        "the node closed the connection without an answer; it may have stopped (see its log)"
    ))
}
