//! `gear snapshot NAME [FILE]`: an archive of the gear (its deployments, data
//! and environment) written by the node into a pipe and saved here, in a
//! new file (`NAME-YYYYMMDD-HHMMSS.tar.gz` by default) or on standard output.

use std::io::Write;
use std::path::{Path, PathBuf};

use gearhost_api::ops;

use crate::client::{GearArg, Target, call_receiving};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear snapshot`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// Where to write the archive (a gzip-compressed tar): a new file, or `-`
    /// for standard output. Default: `NAME-YYYYMMDD-HHMMSS.tar.gz` (UTC) in
    /// the current directory. An existing file is not overwritten.
    pub file: Option<PathBuf>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON (on standard error when the archive goes to
    /// standard output).
    #[arg(long)]
    pub json: bool,
}

/// `NAME-YYYYMMDD-HHMMSS.tar.gz` for now, in UTC.
pub fn default_file(name: &str, now: std::time::SystemTime) -> PathBuf {
    // 2026-12-05T08:02:55Z
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(digits.len().min(8));
    PathBuf::from(format!("{name}-{date}-{time}.tar.gz"))
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| default_file(&args.gear.name, std::time::SystemTime::now()));
    let to_stdout = path.as_os_str() == "-";
    let op = ops::Snapshot {
        gear: args.gear.to_ref(),
    };
    let (answer, size) = if to_stdout {
        call_receiving(&args.target, op, |mut pipe| {
            let mut out = std::io::stdout().lock();
            let n = std::io::copy(&mut pipe, &mut out).map_err(|e| {
                Failure::Failed(anyhow::anyhow!(
                    "cannot write the archive to standard output: {e}"
                ))
            })?;
            out.flush()
                .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot write the archive: {e}")))?;
            Ok(n)
        })?
    } else {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                let advice = match e.kind() {
                    std::io::ErrorKind::AlreadyExists => "; give another file name, or remove it",
                    _ => "",
                };
                Failure::Invalid(anyhow::anyhow!(
                    "cannot create {}: {e}{advice}",
                    path.display()
                ))
            })?;
        let saved = path.clone();
        let got = call_receiving(&args.target, op, move |pipe| save(pipe, file, &saved));
        if got.is_err() {
            // an archive cut short is no snapshot
            let _ = std::fs::remove_file(&path);
        }
        got?
    };
    if size != answer.bytes {
        if !to_stdout {
            let _ = std::fs::remove_file(&path);
        }
        return Err(Failure::Failed(anyhow::anyhow!(
            "the node wrote {} bytes, but {size} arrived; nothing was saved",
            answer.bytes
        )));
    }
    if args.json {
        if to_stdout {
            let text =
                serde_json::to_string_pretty(&answer).map_err(|e| Failure::Failed(e.into()))?;
            eprintln!("{text}");
        } else {
            print_json(&answer)?;
        }
        return Ok(());
    }
    for skipped in &answer.skipped {
        eprintln!("  left out {skipped}");
    }
    let shown = if to_stdout {
        "standard output".to_string()
    } else {
        path.display().to_string()
    };
    let line = format!(
        "wrote {shown} ({}): snapshot of {}, deployments {:?}, {} entries",
        gearhost_runtime::manifest::format_size(size),
        args.gear.name,
        answer.deployments,
        answer.entries
    );
    if to_stdout {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

/// Copies the archive from the pipe into `file` (`path` in messages), and
/// makes it durable.
fn save(
    mut pipe: std::io::PipeReader,
    mut file: std::fs::File,
    path: &Path,
) -> Result<u64, Failure> {
    let n = std::io::copy(&mut pipe, &mut file)
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    file.sync_all()
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_is_named_after_the_gear_and_the_time() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_458_975);
        assert_eq!(
            default_file("web", at),
            PathBuf::from("web-20261205-082255.tar.gz")
        );
    }
}
