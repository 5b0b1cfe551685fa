//! `gear list` and `gear show NAME`: gears at a glance and in detail.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{Target, call, call_large};
use crate::output::print_json;

/// Arguments of `gear list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the gears of this namespace.
    #[arg(
        long,
        short = 'N',
        env = "GEARHOST_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gear show`.
pub type ShowArgs = crate::client::OneGear;

/// `gear list`: sorted by namespace and name, in aligned columns. Ten
/// thousand gears are a few MiB of answer: it is decoded straight into views
/// and written out through one buffer.
pub fn list(args: ListArgs) -> CmdResult {
    let mut gears = call_large(&args.target, ops::List {})?;
    if let Some(ns) = &args.namespace {
        gears.retain(|g| &g.gear.namespace == ns);
    }
    gears.sort_by(|a, b| (&a.gear.namespace, &a.gear.name).cmp(&(&b.gear.namespace, &b.gear.name)));
    if args.json {
        crate::output::write_json(&gears)?;
        return Ok(());
    }
    // in a cluster each gear says which node holds it
    let clustered = gears.iter().any(|v| v.gear.node.is_some());
    let rows: Vec<Vec<String>> = gears
        .iter()
        .map(|v| {
            let g = &v.gear;
            let mut row = vec![
                g.name.clone(),
                g.namespace.clone(),
                g.cartridge.clone(),
                g.state.to_string(),
                g.uid.to_string(),
                g.active_deployment.map_or("-".into(), |d| d.to_string()),
            ];
            if clustered {
                row.push(g.node.clone().unwrap_or_else(|| "-".into()));
            }
            row.push(g.url.clone().unwrap_or_else(|| "-".into()));
            row
        })
        .collect();
    let mut header = vec!["NAME", "NAMESPACE", "CARTRIDGE", "STATE", "UID", "DEPLOY"];
    if clustered {
        header.push("NODE");
    }
    header.push("URL");
    crate::output::print_table(&header, &rows);
    Ok(())
}

/// `bytes` for people: `12.3 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `gear show`
pub fn show(args: ShowArgs) -> CmdResult {
    let detail = call(
        &args.target,
        ops::Show {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        print_json(&detail)?;
        return Ok(());
    }
    let g = &detail.view.gear;
    crate::output::print_rows(&[
        ("name", g.name.clone()),
        ("namespace", g.namespace.clone()),
        ("id", g.id.clone()),
        ("cartridge", g.cartridge.clone()),
        ("state", g.state.to_string()),
        ("desired", g.desired.to_string()),
        ("uid", g.uid.to_string()),
        ("selinux level", g.mcs_level.clone()),
        (
            "deployment",
            g.active_deployment.map_or("-".into(), |d| d.to_string()),
        ),
        (
            "url",
            g.url
                .clone()
                .unwrap_or_else(|| "- (no HTTP endpoint; reach it with `gear link`)".into()),
        ),
        ("home", detail.home.display().to_string()),
        (
            "disk",
            detail.disk.map_or("no quota".into(), |d| {
                format!(
                    "{} of {} ({}%)",
                    size(d.used),
                    size(d.limit),
                    d.used.saturating_mul(100) / d.limit.max(1)
                )
            }),
        ),
        (
            "memory",
            detail.memory.map_or("-".into(), |m| {
                if g.state == gearhost_api::reply::GearState::Frozen {
                    format!("{} (held while frozen)", size(m))
                } else {
                    size(m)
                }
            }),
        ),
        (
            "failure",
            detail.view.failure.clone().unwrap_or_else(|| "-".into()),
        ),
    ]);
    crate::output::print_processes(&detail.view.processes);
    for l in &detail.links {
        println!(
            "  link to {} on 127.0.0.1:{}{}",
            l.gear,
            l.port,
            if l.env.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.env.join(", "))
            }
        );
    }
    for from in &detail.linked_from {
        println!("  linked from {from}");
    }
    for alias in &detail.aliases {
        println!("  alias {alias}");
    }
    Ok(())
}
