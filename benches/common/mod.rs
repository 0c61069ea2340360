//! What every benchmark prints at its end: markdown table rows ready to paste
//! into `docs/benchmarks.md`, each carrying the date, the commit and the
//! machine it was measured on, so a figure is never re-typed by hand.
//!
//! A directory module (not `benches/*.rs`), so Cargo does not take it for a
//! benchmark target of its own.

use std::process::Command;

/// Where and on what a benchmark ran.
pub struct RunInfo {
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    /// `git rev-parse --short HEAD`, with `+dirty` when tracked files differ
    /// from it; `unknown` outside a git checkout.
    pub commit: String,
    /// CPUs available to the process, the CPU model and the memory.
    pub machine: String,
}

impl RunInfo {
    pub fn collect() -> Self {
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
            commit: commit(),
            machine: machine(),
        }
    }

    /// One markdown table row: date, commit, machine, then `cells`.
    pub fn row(&self, cells: &[String]) -> String {
        let mut all = vec![self.date.clone(), self.commit.clone(), self.machine.clone()];
        all.extend(cells.iter().cloned());
        let cells: Vec<String> = all.iter().map(|c| c.replace('|', "\\|")).collect();
        format!("| {} |", cells.join(" | "))
    }
}

/// Prints a block that starts and ends with a marker line, so the rows are
/// easy to find in the bench's output.
pub fn print_rows(table: &str, rows: &[String]) {
    println!("\n--- paste into docs/benchmarks.md, table \"{table}\" ---");
    for row in rows {
        println!("{row}");
    }
    println!("--- end ---");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn commit() -> String {
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]).filter(|h| !h.is_empty()) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => head,
        _ => format!("{head}+dirty"),
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or_else(|_| "?".into(), |n| n.to_string());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!(", {:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpus} CPU {model}{memory}")
}
