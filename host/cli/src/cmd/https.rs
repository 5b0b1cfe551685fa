//! `gear https NAME [--redirect on|off] [--hsts DURATION|off]`: what a gear
//! asks of HTTPS at the node's frontend.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// Arguments of `gear https`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// Redirect plain-HTTP requests to HTTPS (for the gear's names that have
    /// a certificate): on or off.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub redirect: Option<bool>,
    /// Send Strict-Transport-Security over TLS with this max-age (e.g. 1y,
    /// 180days), or `off`.
    #[arg(long, value_name = "DURATION|off", value_parser = max_age)]
    pub hsts: Option<u64>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?} is neither on nor off")),
    }
}

fn max_age(s: &str) -> Result<u64, String> {
    if s == "off" {
        return Ok(0);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 1y or 180days, or off"))
        .and_then(|secs| {
            if secs == 0 {
                Err("a max-age of 0 turns HSTS off: write off".into())
            } else {
                Ok(secs)
            }
        })
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let options = call(
        &args.target,
        ops::HttpsSet {
            gear: args.gear.to_ref(),
            redirect: args.redirect,
            hsts_max_age: args.hsts,
        },
    )?;
    if args.json {
        return Ok(print_json(&options)?);
    }
    println!(
        "{}: redirect to HTTPS {}, HSTS {}",
        args.gear.name,
        if options.redirect { "on" } else { "off" },
        options.hsts_max_age.map_or("off".to_string(), |age| {
            format!(
                "max-age={age} ({})",
                humantime::format_duration(std::time::Duration::from_secs(age))
            )
        })
    );
    for name in &options.without_certificate {
        eprintln!("  {name} has no certificate: its plain-HTTP requests are not redirected");
    }
    Ok(())
}
