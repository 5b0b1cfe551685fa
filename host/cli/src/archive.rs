//! The sources `gear deploy` and `gear cartridge install` send: the client
//! walks the directory with its caller's own rights and writes a tar archive
//! of it, which the node unpacks. The node never opens the caller's paths,
//! so nobody deploys a file they could not read themselves.
//!
//! Only directories, regular files and symlinks are sent. Symlinks are sent
//! as links and never followed, wherever they point (the node keeps them as
//! links inside the deployment, where the gear resolves them in its own
//! root). FIFOs, sockets and device nodes are refused, and so is anything the
//! caller cannot read, each named, before anything reaches the node. Files
//! linked to each other (hard links) are sent as separate copies. What the
//! tree's `.gearignore` names, and `.git`, is left out ([`crate::ignore`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::Failure;

/// How deep the sources may nest directories (the node's limit too).
pub const MAX_DEPTH: usize = 128;

/// Entries one archive may hold (the node's default limit too).
pub const MAX_ENTRIES: usize = 100_000;

/// The default `--max-size`: the node's default `gears.max-deploy-size`.
pub const DEFAULT_MAX_SIZE: &str = "1GiB";

/// One entry to send.
#[derive(Debug)]
enum Kind {
    Dir,
    File(u64),
    Symlink(PathBuf),
}

#[derive(Debug)]
struct Item {
    /// Relative to the root, never empty.
    rel: PathBuf,
    kind: Kind,
    mode: u32,
    mtime: u64,
}

/// A directory walked and checked, ready to be sent.
#[derive(Debug)]
pub struct Sources {
    root: PathBuf,
    items: Vec<Item>,
    /// The sum of the files' sizes.
    pub bytes: u64,
}

impl Sources {
    /// Entries to send.
    pub fn entries(&self) -> usize {
        self.items.len()
    }
}

fn unreadable(path: &Path, e: &std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Failure::Invalid(anyhow::anyhow!(
            "cannot read {}: permission denied; the sources are read with your own rights, \
             so leave out what you may not read (or ask its owner)",
            path.display()
        ))
    } else {
        Failure::Invalid(anyhow::anyhow!("cannot read {}: {e}", path.display()))
    }
}

/// Walk `root` with the caller's rights: every entry checked (its kind,
/// that it can be read), their sizes summed against `max_bytes`.
pub fn walk(root: &Path, max_bytes: u64) -> Result<Sources, Failure> {
    let meta = std::fs::metadata(root).map_err(|e| unreadable(root, &e))?;
    if !meta.is_dir() {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "{} is not a directory; give the directory of sources",
            root.display()
        )));
    }
    let mut sources = Sources {
        root: root.to_path_buf(),
        items: Vec::new(),
        bytes: 0,
    };
    let ignore = crate::ignore::Ignore::of(root)
        .map_err(|e| unreadable(&root.join(crate::ignore::FILE), &e))?;
    walk_below(root, Path::new(""), 0, max_bytes, &ignore, &mut sources)?;
    Ok(sources)
}

fn walk_below(
    dir: &Path,
    rel: &Path,
    depth: usize,
    max_bytes: u64,
    ignore: &crate::ignore::Ignore,
    out: &mut Sources,
) -> Result<(), Failure> {
    if depth >= MAX_DEPTH {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "{} is nested more than {MAX_DEPTH} directories deep; send a shallower tree",
            dir.display()
        )));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, &e))? {
        names.push(entry.map_err(|e| unreadable(dir, &e))?.file_name());
    }
    // the same archive for the same tree
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| unreadable(&path, &e))?;
        let ty = meta.file_type();
        if ignore.skips(&rel, ty.is_dir()) {
            continue;
        }
        let kind = if ty.is_dir() {
            Kind::Dir
        } else if ty.is_symlink() {
            Kind::Symlink(std::fs::read_link(&path).map_err(|e| unreadable(&path, &e))?)
        } else if ty.is_file() {
            // open it now, so that what cannot be read is named before anything is sent
            open_file(&path)?;
            Kind::File(meta.len())
        } else {
            let what = if ty.is_fifo() {
                "a FIFO"
            } else if ty.is_socket() {
                "a socket"
            } else if ty.is_block_device() || ty.is_char_device() {
                "a device node"
            } else {
                "neither a directory, a file nor a symlink"
            };
            return Err(Failure::Invalid(anyhow::anyhow!(
                "{} is {what}; only directories, regular files and symlinks are sent: \
                 move it out of the tree",
                path.display()
            )));
        };
        if let Kind::File(size) = kind {
            out.bytes = out.bytes.saturating_add(size);
            if out.bytes > max_bytes {
                return Err(Failure::Invalid(anyhow::anyhow!(
                    "the sources add up to more than {max_bytes} bytes (at {}); \
                     send less, or raise --max-size (the node has its own limit, gears.max-deploy-size)",
                    path.display()
                )));
            }
        }
        let is_dir = matches!(kind, Kind::Dir);
        out.items.push(Item {
            rel: rel.clone(),
            kind,
            mode: meta.mode() & 0o777,
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
        });
        if out.items.len() > MAX_ENTRIES {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "the sources hold more than {MAX_ENTRIES} entries; send fewer files"
            )));
        }
        if is_dir {
            walk_below(&path, &rel, depth + 1, max_bytes, ignore, out)?;
        }
    }
    Ok(())
}

fn open_file(path: &Path) -> Result<File, Failure> {
    std::fs::OpenOptions::new()
        .read(true)
        // a file swapped for a link after the walk is not followed
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| unreadable(path, &e))
}

/// Write the archive of `sources` to `out`, ending with the end marker. An
/// error leaves the archive without its end marker, which the node refuses.
/// A write refused because the reader closed its end stops the archive
/// without failing it: the node stops reading at the end marker, which can
/// come before the last of it is written, or at an error of its own, and
/// either way its answer is what decides (as for [`crate::client::pass_on`]).
pub fn write(sources: &Sources, out: impl Write) -> Result<(), Failure> {
    match write_entries(sources, out) {
        Err(Stop::Closed) => Ok(()),
        Err(Stop::Failed(failure)) => Err(failure),
        Ok(()) => Ok(()),
    }
}

/// Why an archive was not written to its end.
enum Stop {
    /// The reader closed its end.
    Closed,
    /// Anything else.
    Failed(Failure),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Stop {
        Stop::Failed(failure)
    }
}

fn write_entries(sources: &Sources, out: impl Write) -> Result<(), Stop> {
    let mut b = tar::Builder::new(out);
    let broken = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Stop::Closed,
        // a file that shrank while it was read: the sources' fault
        std::io::ErrorKind::UnexpectedEof => Stop::Failed(Failure::Invalid(anyhow::anyhow!(
            "{e}; deploy again once it is settled"
        ))),
        _ => Stop::Failed(Failure::Failed(anyhow::anyhow!(
            "cannot send the sources to the node: {e}"
        ))),
    };
    for item in &sources.items {
        let path = sources.root.join(&item.rel);
        let mut h = tar::Header::new_gnu();
        h.set_mode(item.mode);
        h.set_mtime(item.mtime);
        match &item.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &item.rel, std::io::empty())
                    .map_err(broken)?;
            }
            Kind::Symlink(to) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &item.rel, to).map_err(broken)?;
            }
            Kind::File(_) => {
                let file = open_file(&path)?;
                let meta = file.metadata().map_err(|e| unreadable(&path, &e))?;
                if !meta.is_file() {
                    return Err(Stop::Failed(Failure::Invalid(anyhow::anyhow!(
                        "{} changed into something other than a file while it was sent",
                        path.display()
                    ))));
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                let exact = Exact {
                    inner: file,
                    left: meta.len(),
                    path: &path,
                };
                b.append_data(&mut h, &item.rel, exact).map_err(broken)?;
            }
        }
    }
    b.into_inner().map_err(broken)?.flush().map_err(broken)
}

/// A file read for exactly the size its header announced: one that shrinks
/// while it is sent is an error, not a damaged archive.
struct Exact<'a> {
    inner: File,
    left: u64,
    path: &'a Path,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was sent", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The label the node keeps for the sources: the directory's full path.
pub fn label(root: &Path) -> String {
    root.display().to_string()
}

/// Parse a `--max-size` value.
pub fn parse_max_size(v: &str) -> Result<u64, String> {
    gearhost_runtime::manifest::parse_size(v)
        .ok_or_else(|| format!("invalid size {v:?}; use e.g. \"512MiB\" or \"2GiB\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(f: Failure) -> String {
        match f {
            Failure::Invalid(e) | Failure::Failed(e) | Failure::Environment(e) => e.to_string(),
            Failure::Reported(c) => format!("reported {c}"),
        }
    }

    #[test]
    fn a_tree_is_sent_with_its_links_as_links() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("static")).expect("dirs");
        std::fs::write(src.join("static/site.css"), "body{}").expect("file");
        std::fs::write(src.join("app.py"), "print(1)").expect("file");
        std::os::unix::fs::symlink("/etc/shadow", src.join("shadow")).expect("link");
        let sources = walk(&src, 1 << 20).expect("walked");
        assert_eq!(sources.bytes, 14);
        let mut bytes = Vec::new();
        write(&sources, &mut bytes).expect("written");
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().expect("entries") {
            let e = e.expect("entry");
            let path = e.path().expect("path").display().to_string();
            let link = e
                .link_name()
                .expect("link")
                .map(|l| l.display().to_string());
            seen.push((path, e.header().entry_type(), link));
        }
        assert_eq!(
            seen,
            vec![
                ("app.py".into(), tar::EntryType::Regular, None),
                (
                    "shadow".into(),
                    tar::EntryType::Symlink,
                    Some("/etc/shadow".into())
                ),
                ("static".into(), tar::EntryType::Directory, None),
                ("static/site.css".into(), tar::EntryType::Regular, None),
            ]
        );
    }

    #[test]
    fn fifos_sockets_and_too_much_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("dir");
        nix::unistd::mkfifo(
            &src.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");
        let e = message(walk(&src, 1 << 20).expect_err("fifo"));
        assert!(e.contains("pipe") && e.contains("a FIFO"), "{e}");
        std::fs::remove_file(src.join("pipe")).expect("removed");
        let _socket = std::os::unix::net::UnixListener::bind(src.join("sock")).expect("socket");
        let e = message(walk(&src, 1 << 20).expect_err("socket"));
        assert!(e.contains("sock") && e.contains("a socket"), "{e}");
        std::fs::remove_file(src.join("sock")).expect("removed");
        std::fs::write(src.join("big"), vec![0; 2000]).expect("file");
        let e = message(walk(&src, 1000).expect_err("too big"));
        assert!(e.contains("--max-size"), "{e}");
    }

    #[test]
    fn a_reader_that_closes_its_end_leaves_the_verdict_to_the_node() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("dir");
        std::fs::write(src.join("big"), vec![7; 1 << 20]).expect("file");
        let sources = walk(&src, 1 << 30).expect("walked");
        // a reader gone before the first byte: every write fails with EPIPE
        let (read, write_end) = std::io::pipe().expect("pipe");
        drop(read);
        write(&sources, write_end).expect("no failure of its own");
        // any other write error is one
        struct Refusing;
        impl Write for Refusing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = message(write(&sources, Refusing).expect_err("a failed write"));
        assert!(e.contains("disk on fire"), "{e}");
    }
}
