//! `gear deploy NAME DIR`: a new deployment, built by the cartridge, activated, restarted.

use std::path::PathBuf;

use gearhost_api::{Event, ops};

use crate::archive;
use crate::client::{
    GearArg, Target, call, call_streaming, call_streaming_with, pass_on, show_event,
};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear deploy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The directory of sources to deploy. It is read with your own rights
    /// and sent to the node as an archive: directories, regular files and
    /// symlinks (sent as links, never followed); FIFOs, sockets, device
    /// nodes and files you cannot read are refused. Default: the current
    /// directory. What its `.gearignore` names, and `.git`, is left out.
    /// `-` reads a tar archive of the sources from standard input instead.
    ///
    /// For a gear that runs an image, an image reference instead
    /// (`registry/repository:tag`, `...@sha256:...`): the gear is rolled to
    /// that image as a new deployment (`gear rollback` goes back).
    #[arg(default_value = ".")]
    pub source: PathBuf,
    /// The image to deploy, when the source argument could be read as a
    /// directory.
    #[command(flatten)]
    pub image: super::image::ImageArgs,
    /// The most the sources' files may add up to (the node has its own
    /// limit, `gears.max-deploy-size`).
    #[arg(long, value_name = "SIZE", default_value = archive::DEFAULT_MAX_SIZE, value_parser = archive::parse_max_size)]
    pub max_size: u64,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Cancel the deploy in progress on the gear (started from anywhere):
    /// its hooks are stopped, its deployment is marked failed, and the
    /// deployment serving before it keeps serving.
    #[arg(long)]
    pub cancel: bool,
}

impl Args {
    /// The image to deploy: `--image REF`, or a source argument that names no directory here
    /// and reads as an image reference (a registry host or a tag or digest in it).
    pub fn image_reference(&self) -> Option<String> {
        if let Some(reference) = &self.image.image {
            return Some(reference.clone());
        }
        let text = self.source.to_str()?;
        let looks_like_image = text.strip_prefix("oci://").is_some()
            || text.contains('@')
            || text
                .split('/')
                .next_back()
                .is_some_and(|last| last.contains(':'));
        (looks_like_image
            && !self.source.exists()
            && !text.starts_with('.')
            && !text.starts_with('/'))
        .then(|| text.to_string())
    }
}

/// `gear deploy NAME -`: the sources are a tar archive on standard input
/// (how a deploy travels through the node's ssh endpoint); the node checks
/// it as it checks any other.
fn from_stdin(args: &Args) -> CmdResult {
    let max = args.max_size;
    let deployed = call_streaming(
        &args.target,
        ops::Deploy {
            gear: args.gear.to_ref(),
            source: "standard input".into(),
        },
        move |pipe| {
            use std::io::Read;
            // a little over the files' limit: the archive's headers count too
            let input = std::io::stdin()
                .lock()
                .take(max.saturating_mul(2).max(1 << 20));
            pass_on(input, pipe)
        },
    )?;
    report(args, &deployed)
}

fn report(args: &Args, deployed: &gearhost_api::reply::Deployed) -> CmdResult {
    if args.json {
        print_json(deployed)?;
    } else {
        match &deployed.url {
            Some(url) => println!(
                "deployment {} of {} is active ({}); {url}",
                deployed.deployment, args.gear.name, deployed.state
            ),
            None => println!(
                "deployment {} of {} is active ({})",
                deployed.deployment, args.gear.name, deployed.state
            ),
        }
    }
    Ok(())
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    if args.cancel {
        return cancel(&args);
    }
    if args.source.as_os_str() == "-" {
        return from_stdin(&args);
    }
    if let Some(reference) = args.image_reference() {
        let op = args.image.deploy_op(args.gear.to_ref(), &reference)?;
        eprintln!("deploying {reference} to {}", args.gear.name);
        let deployed = call(&args.target, op)?;
        return report(&args, &deployed);
    }
    args.image.check()?;
    let source = std::fs::canonicalize(&args.source).map_err(|e| {
        Failure::Invalid(anyhow::anyhow!(
            "cannot read {}: {e}; give an existing directory",
            args.source.display()
        ))
    })?;
    let sources = archive::walk(&source, args.max_size)?;
    eprintln!(
        "deploying {} to {} ({} entries, {} bytes)",
        source.display(),
        args.gear.name,
        sources.entries(),
        sources.bytes
    );
    // from here on Ctrl-C says what becomes of the deploy, and cancels it
    // when pressed again
    let ours = interrupts::watch(args.target.clone(), args.gear.to_ref())?;
    let deployed = call_streaming_with(
        &args.target,
        ops::Deploy {
            gear: args.gear.to_ref(),
            source: archive::label(&source),
        },
        move |pipe| archive::write(&sources, pipe),
        |event| {
            // the node names the new deployment as it unpacks it: from then
            // on, a cancel from here cancels that one and no other
            if let Event::Progress(text) = event
                && let Some(id) = unpacking_into(text)
            {
                *gearhost_sys::lock::lock(&ours) = Some(id);
            }
            show_event(event);
        },
    )?;
    report(&args, &deployed)
}

/// The deployment the node's "unpacking SOURCE into deployment N" names.
fn unpacking_into(text: &str) -> Option<u32> {
    if !text.starts_with("unpacking ") {
        return None;
    }
    text.rsplit_once(" into deployment ")?.1.parse().ok()
}

/// `gear deploy NAME --cancel`.
fn cancel(args: &Args) -> CmdResult {
    let cancelled = call(
        &args.target,
        ops::DeployCancel {
            gear: args.gear.to_ref(),
            deployment: None,
        },
    )?;
    if args.json {
        print_json(&cancelled)?;
    } else {
        println!(
            "the deploy of deployment {} of {} is being cancelled; the deployment before it \
             keeps serving (see `gear deployments {}`)",
            cancelled.deployment, args.gear.name, args.gear.name
        );
    }
    Ok(())
}

/// Ctrl-C during a deploy: the deploy runs on the node, whatever becomes of
/// this command, so the first one says so, the second cancels the deploy
/// (the command then shows the node restoring the deployment before it), or
/// leaves when the deploy has not started yet (it waits behind another, and
/// the node drops a waiting deploy whose caller left), and a third leaves
/// without waiting.
mod interrupts {
    use std::sync::{Arc, Mutex};

    use gearhost_api::{GearRef, ops};
    use nix::sys::signal::{SigSet, Signal};

    use crate::Failure;
    use crate::client::{Target, call};

    /// Take SIGINT from every thread of the command (those started from now
    /// on inherit the mask) and handle it on a thread of its own. The
    /// returned slot is where the caller puts the deployment once the node
    /// has named it.
    pub fn watch(target: Target, gear: GearRef) -> Result<Arc<Mutex<Option<u32>>>, Failure> {
        let ours = Arc::new(Mutex::new(None));
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.thread_block()
            .map_err(|e| Failure::Environment(anyhow::anyhow!("cannot take Ctrl-C over: {e}")))?;
        let slot = ours.clone();
        std::thread::spawn(move || {
            let mut presses = 0;
            while set.wait().is_ok() {
                presses += 1;
                let deployment = *gearhost_sys::lock::lock(&slot);
                match (presses, deployment) {
                    (1, _) => eprintln!(
                        "\ninterrupted: the deploy goes on on the node (leaving this command does \
                         not stop it). Press Ctrl-C again to cancel it, or run `gear deploy {} \
                         --cancel`; the deployment serving now keeps serving.",
                        gear.name
                    ),
                    (2, None) => {
                        eprintln!(
                            "the deploy had not started (it was waiting for the one in \
                             progress); leaving, and the node drops it: nothing is deployed"
                        );
                        std::process::exit(130);
                    }
                    (2, Some(id)) => {
                        eprintln!("cancelling the deploy of deployment {id} of {}", gear.name);
                        let op = ops::DeployCancel {
                            gear: gear.clone(),
                            deployment: Some(id),
                        };
                        match call(&target, op) {
                            Ok(_) => eprintln!(
                                "the deploy of deployment {id} is cancelled; the node restores \
                                 the deployment before it (Ctrl-C again leaves without waiting)"
                            ),
                            Err(
                                Failure::Failed(e) | Failure::Invalid(e) | Failure::Environment(e),
                            ) => eprintln!("could not cancel the deploy: {e:#}"),
                            Err(Failure::Reported(_)) => {}
                        }
                    }
                    _ => {
                        eprintln!("no longer waiting; the node finishes on its own");
                        std::process::exit(130);
                    }
                }
            }
        });
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::unpacking_into;

    #[test]
    fn the_deployment_is_read_from_the_unpacking_line() {
        assert_eq!(
            unpacking_into("unpacking /home/ada/my app into deployment 12"),
            Some(12)
        );
        assert_eq!(unpacking_into("unpacked 6 entries, 334 bytes"), None);
        assert_eq!(unpacking_into("building deployment 12"), None);
    }
}
