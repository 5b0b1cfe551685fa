//! `gear alias add|remove|cert|list NAME [HOSTNAME]`: extra host names the
//! node's frontend routes to a gear, and the certificates it serves them
//! with over HTTPS.

use std::path::PathBuf;

use gearhost_api::{Op, ops, reply::AliasChanged};

use crate::client::{GearArg, Target, call};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// `gear alias ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Route another host name to the gear (point its DNS at this node);
    /// with --cert and --key, serve it over HTTPS with that certificate.
    Add(AddArgs),
    /// Stop routing a host name to the gear (its certificate goes too).
    Remove(ChangeArgs),
    /// Attach (or replace) the certificate an alias is served with over HTTPS.
    Cert(CertArgs),
    /// The gear's own host name and its aliases.
    List(ListArgs),
}

/// Arguments of `gear alias add` and `remove`.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The host name, e.g. www.example.com.
    pub hostname: String,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A certificate chain and its key, read with your own rights.
#[derive(Debug, clap::Args)]
pub struct CertFiles {
    /// The certificate chain (PEM, the host's certificate first).
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Get the certificate from the node's ACME server instead (ordered now,
    /// renewed before it expires).
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub acme: bool,
}

/// Arguments of `gear alias add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The alias.
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Its certificate, if it is to be served over HTTPS.
    #[command(flatten)]
    pub files: CertFiles,
}

/// Arguments of `gear alias cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// The alias.
    #[command(flatten)]
    pub change: ChangeArgs,
    /// The certificate.
    #[command(flatten)]
    pub files: CertFiles,
}

/// The most bytes of a certificate or key file read.
const MAX_PEM: u64 = 256 * 1024;

fn read_pem(path: &PathBuf, what: &str) -> Result<String, Failure> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_string(&mut text))
        .map_err(|e| {
            Failure::Invalid(anyhow::anyhow!(
                "cannot read the {what} {}: {e}",
                path.display()
            ))
        })?;
    if text.len() as u64 > MAX_PEM {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "{} is over {} KiB; give one PEM {what}",
            path.display(),
            MAX_PEM / 1024
        )));
    }
    Ok(text)
}

/// Attaches the certificate in `files` to the alias, and says until when.
fn attach(args: &ChangeArgs, files: &CertFiles) -> CmdResult {
    if files.acme {
        let ordered = call(
            &args.target,
            ops::AliasAcme {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
        )?;
        if args.json {
            return Ok(print_json(&ordered)?);
        }
        println!(
            "a certificate for {} is ordered from the node's ACME server; `gear alias list {}` \
             shows when it is served",
            ordered.hostname, args.gear.name
        );
        return Ok(());
    }
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "give the certificate and its key (--cert FILE --key FILE), or --acme"
        )));
    };
    let attached = call(
        &args.target,
        ops::AliasCert {
            gear: args.gear.to_ref(),
            hostname: args.hostname.clone(),
            certificate: read_pem(cert, "certificate")?,
            key: read_pem(key, "key")?,
        },
    )?;
    if args.json {
        return Ok(print_json(&attached)?);
    }
    println!(
        "{} is served over HTTPS with a certificate from {} valid until {}",
        attached.hostname, attached.issuer, attached.not_after
    );
    Ok(())
}

/// Arguments of `gear alias list`.
pub type ListArgs = crate::client::OneGear;

/// Sends an add or remove request and says what changed: `<gear> <what> <hostname>`, the
/// host name as the node stores it.
fn change<O: Op<Reply = AliasChanged>>(args: &ChangeArgs, op: O, what: &str) -> CmdResult {
    let changed = call(&args.target, op)?;
    if args.json {
        return Ok(print_json(&changed)?);
    }
    if changed.unchanged {
        println!("{} already answers to {}", args.gear.name, changed.hostname);
    } else {
        println!("{} {what} {}", args.gear.name, changed.hostname);
    }
    Ok(())
}

/// Run the command.
pub fn run(command: Command) -> CmdResult {
    match command {
        Command::Add(AddArgs {
            change: args,
            files,
        }) if files.cert.is_none() && !files.acme => change(
            &args,
            ops::AliasAdd {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
            "now also answers to",
        )?,
        Command::Add(AddArgs {
            change: args,
            files,
        }) => {
            // the files are read before anything changes: a typo adds nothing
            if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
                read_pem(cert, "certificate")?;
                read_pem(key, "key")?;
            }
            let added = call(
                &args.target,
                ops::AliasAdd {
                    gear: args.gear.to_ref(),
                    hostname: args.hostname.clone(),
                },
            )?;
            if let Err(e) = attach(&args, &files) {
                // a new alias whose certificate was refused is not kept: it
                // would answer over plain HTTP only
                if !added.unchanged {
                    let _ = call(
                        &args.target,
                        ops::AliasRemove {
                            gear: args.gear.to_ref(),
                            hostname: args.hostname.clone(),
                        },
                    );
                }
                return Err(e);
            }
            if !args.json {
                println!("{} now also answers to {}", args.gear.name, added.hostname);
            }
        }
        Command::Cert(CertArgs {
            change: args,
            files,
        }) => attach(&args, &files)?,
        Command::Remove(args) => change(
            &args,
            ops::AliasRemove {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
            "no longer answers to",
        )?,
        Command::List(args) => {
            let names = call(
                &args.target,
                ops::AliasList {
                    gear: args.gear.to_ref(),
                },
            )?;
            if args.json {
                return Ok(print_json(&names)?);
            }
            println!("{}", names.name);
            for alias in &names.aliases {
                match names.tls.iter().find(|t| t.hostname == *alias) {
                    None => println!("{alias}"),
                    Some(t) => {
                        let source = if t.acme { " (ACME)" } else { "" };
                        let state = match (&t.not_after, &t.error) {
                            (Some(until), None) => format!("https until {until}{source}"),
                            (Some(until), Some(e)) => format!(
                                "https until {until}{source}; renewal failed: {e}; next try {}",
                                t.next_try.as_deref().unwrap_or("soon")
                            ),
                            (None, Some(e)) => format!(
                                "no certificate yet: {e}; next try {}",
                                t.next_try.as_deref().unwrap_or("soon")
                            ),
                            (None, None) => "certificate being ordered (ACME)".to_string(),
                        };
                        println!("{alias}  {state}");
                    }
                }
            }
        }
    }
    Ok(())
}
