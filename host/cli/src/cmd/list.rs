//! `gear list` and `gear show NAME`: gears at a glance and in detail.

use gearhost_node::api::Request;

use crate::CmdResult;
use crate::client::{Target, call};
use crate::output::print_json;

/// Arguments of `gear list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gear show`.
pub type ShowArgs = crate::client::OneGear;

/// `gear list`
pub fn list(args: ListArgs) -> CmdResult {
    let v = call(&args.target, &Request::List)?;
    if args.json {
        print_json(&v)?;
        return Ok(());
    }
    println!(
        "{:<20} {:<14} {:<12} {:<10} {:<7} {:<6} URL",
        "NAME", "NAMESPACE", "CARTRIDGE", "STATE", "UID", "DEPLOY"
    );
    for g in v.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<14} {:<12} {:<10} {:<7} {:<6} {}",
            g["name"].as_str().unwrap_or(""),
            g["namespace"].as_str().unwrap_or(""),
            g["cartridge"].as_str().unwrap_or(""),
            g["state"].as_str().unwrap_or(""),
            g["uid"],
            g["active_deployment"]
                .as_u64()
                .map_or("-".into(), |d| d.to_string()),
            g["url"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `gear show`
pub fn show(args: ShowArgs) -> CmdResult {
    let v = call(
        &args.target,
        &Request::Show {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        print_json(&v)?;
        return Ok(());
    }
    let field = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    crate::output::print_rows(&[
        ("name", field("name")),
        ("namespace", field("namespace")),
        ("id", field("id")),
        ("cartridge", field("cartridge")),
        ("state", field("state")),
        ("desired", field("desired")),
        ("uid", field("uid")),
        ("selinux level", field("mcs_level")),
        ("deployment", field("active_deployment")),
        ("url", field("url")),
        ("home", field("home")),
        ("failure", field("failure")),
    ]);
    crate::output::print_processes(&v);
    for l in v["links"].as_array().into_iter().flatten() {
        let env = crate::output::strings(&l["env"]);
        println!(
            "  link to {} on 127.0.0.1:{}{}",
            l["gear"].as_str().unwrap_or("?"),
            l["port"],
            if env.is_empty() {
                String::new()
            } else {
                format!(" ({})", env.join(", "))
            }
        );
    }
    for from in v["linked_from"].as_array().into_iter().flatten() {
        println!("  linked from {}", from.as_str().unwrap_or("?"));
    }
    Ok(())
}
