//! Terminal output: plain aligned tables, and colour or progress only where a person watches
//! (stderr is a terminal), so that redirected output stays clean.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde_json::Value;

/// Whether stderr may carry ANSI styling: a terminal, and no `NO_COLOR` (no-color.org).
pub fn stderr_styled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` dimmed when stderr is styled.
pub fn dim(text: &str) -> String {
    if stderr_styled() {
        format!("\x1b[2m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// One JSON document for `--json`.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a Value always serializes")
    );
}

/// Prints rows under a header, columns separated by two spaces and padded to the widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{line}");
    }
}

/// A JSON string field, or `-` when absent.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A duration in milliseconds as `1.53s`, or `-` when there is none.
pub fn duration_ms(value: &Value) -> String {
    match value.as_f64() {
        Some(ms) => format!("{:.2}s", ms / 1000.0),
        None => "-".into(),
    }
}

/// A one-line progress indicator on stderr, drawn only when stderr is a terminal.
pub struct Spinner {
    enabled: bool,
    frame: usize,
    started: Instant,
}

impl Spinner {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    pub fn start() -> Spinner {
        Spinner {
            enabled: std::io::stderr().is_terminal(),
            frame: 0,
            started: Instant::now(),
        }
    }

    /// Redraws the line with the next frame, `label` and the time since the spinner started.
    pub fn tick(&mut self, label: &str) {
        if !self.enabled {
            return;
        }
        let frame = Self::FRAMES[self.frame % Self::FRAMES.len()];
        self.frame += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        eprint!("\r\x1b[2K{frame} {label} {elapsed:.1}s");
        let _ = std::io::stderr().flush();
    }

    pub fn clear(&self) {
        if self.enabled && self.frame > 0 {
            eprint!("\r\x1b[2K");
        }
    }
}
