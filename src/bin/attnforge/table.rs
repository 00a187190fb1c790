//! Output for people (aligned columns) and for scripts (`--json`).

use std::io::Write;

/// Writes one line to stdout. When stdout is closed (`attnforge ... | head`),
/// the command stops quietly, as a shell tool should.
pub fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    if writeln!(o, "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Prints `rows` under `header`, each column as wide as its widest cell;
/// columns whose header starts with `>` are right-aligned.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    let names: Vec<&str> = header.iter().map(|h| h.trim_start_matches('>')).collect();
    let mut width: Vec<usize> = names.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(header.iter().zip(&width))
            .map(|(c, (h, &w))| {
                if h.starts_with('>') {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out(parts.join("  ").trim_end());
    };
    line(&mut names.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}

/// Prints a JSON value, pretty.
pub fn json(v: &serde_json::Value) {
    out(&serde_json::to_string_pretty(v).expect("a Value always serializes"));
}
