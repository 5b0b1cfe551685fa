//! Output helpers shared by subcommands: JSON for machines, aligned text for
//! people.

use std::io::Write;

use serde::Serialize;

/// Writes to standard output (what the crate's `print!` and `println!` expand to). When the
/// reader has gone away, `gear` exits at once with status 141 (128 + SIGPIPE), which is what
/// shells expect of a writer cut off by `head`; any other write error is reported the same way
/// std's `print!` reports it.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        panic!("failed printing to stdout: {e}");
    }
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

/// [`print_json`] for a large value: written as it is encoded, through one
/// buffer, without the whole text in memory first (a reader gone away ends
/// `gear` as [`write_stdout`] does).
pub fn write_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => Err(anyhow::anyhow!("failed printing to stdout: {e}")),
        Ok(()) => Ok(()),
    }
}

/// For an answer that says the node changed nothing (`unchanged`), prints
/// its note and returns true.
pub fn print_if_unchanged(unchanged: bool, note: Option<&str>) -> bool {
    if unchanged {
        println!("{}", note.unwrap_or("nothing was changed"));
    }
    unchanged
}

/// Print `key: value` rows with the keys aligned.
pub fn print_rows(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:>width$}  {value}");
    }
}

/// Print `rows` under `header` in columns as wide as their widest cell (the
/// last column is not padded).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Print a gear's processes, one per line.
pub fn print_processes(processes: &[gearhost_api::reply::Process]) {
    for p in processes {
        println!(
            "  process {} {} pid {} restarts {}",
            p.name,
            p.state,
            p.pid.map_or("-".to_string(), |p| p.to_string()),
            p.restarts
        );
    }
}
