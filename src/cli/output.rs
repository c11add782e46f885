//! Terminal output: plain aligned tables, and colour or progress only where a person watches
//! (stderr is a terminal), so that redirected output stays clean.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use anstream::ColorChoice;
use clap::builder::styling::{Style, Styles};
use serde_json::Value;

/// Whether stderr may carry ANSI styling. The decision clap makes for its own errors, so that
/// argument errors and every other message look alike: never with a non-empty `NO_COLOR`
/// (no-color.org), never when stderr is not a terminal (nor on a `dumb` one).
pub fn stderr_styled() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != ColorChoice::Never
}

fn styled(style: Style, text: &str) -> String {
    if stderr_styled() {
        format!("{style}{text}{style:#}")
    } else {
        text.to_owned()
    }
}

/// `text` dimmed when stderr is styled.
pub fn dim(text: &str) -> String {
    styled(Style::new().dimmed(), text)
}

/// Prints a note for the person watching on stderr: `-- <text>`, dimmed. On a terminal it
/// first clears the line, which may hold the spinner (or the terminal's echo of `^C`).
pub fn note(text: &str) {
    let clear = if std::io::stderr().is_terminal() {
        "\r\x1b[2K"
    } else {
        ""
    };
    eprintln!("{clear}{}", dim(&format!("-- {text}")));
}

/// Prints `error: <message>` on stderr, `error:` styled as clap styles its own argument errors.
pub fn error(message: impl Display) {
    const STYLES: Styles = Styles::styled();
    eprintln!("{} {message}", styled(*STYLES.get_error(), "error:"));
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

/// A duration in milliseconds as `340ms` under a second, `1.53s` from a second on, or `-` when
/// there is none.
pub fn duration_ms(value: &Value) -> String {
    match value.as_f64() {
        Some(ms) if ms < 999.5 => format!("{ms:.0}ms"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_under_a_second_are_in_milliseconds() {
        assert_eq!(duration_ms(&json!(0)), "0ms");
        assert_eq!(duration_ms(&json!(340)), "340ms");
        assert_eq!(duration_ms(&json!(999)), "999ms");
        assert_eq!(duration_ms(&json!(1000)), "1.00s");
        assert_eq!(duration_ms(&json!(1534)), "1.53s");
        assert_eq!(duration_ms(&Value::Null), "-");
    }
}
