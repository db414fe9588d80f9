//! Progress of a long operator command on standard error: a bar redrawn in place on a terminal,
//! one line per step otherwise (CI logs, `kubectl logs`), so progress never floods or vanishes.
use std::io::{IsTerminal, Write};

/// A count towards a known total.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    terminal: bool,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let progress = Self {
            label: label.into(),
            total,
            done: 0,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.draw("");
        progress
    }

    /// `n` more done; `note` says what (e.g. how many changed).
    pub fn advance(&mut self, n: u64, note: &str) {
        self.done += n;
        self.draw(note);
    }

    /// The bar and counts as one line.
    pub fn line(&self, note: &str) -> String {
        const WIDTH: u64 = 30;
        let done = self.done.min(self.total);
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        format!(
            "{}: [{}{}] {}/{} ({percent}%){}{}",
            self.label,
            "#".repeat(filled as usize),
            "-".repeat((WIDTH - filled) as usize),
            self.done,
            self.total,
            if note.is_empty() { "" } else { " " },
            note
        )
    }

    fn draw(&self, note: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{}", self.line(note));
        } else {
            let _ = writeln!(err, "{}", self.line(note));
        }
        let _ = err.flush();
    }

    /// Ends the bar's line on a terminal.
    pub fn finish(self) {
        if self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_bar_the_count_and_the_percentage() {
        let mut p = Progress {
            label: "rotate-data".into(),
            total: 4,
            done: 0,
            terminal: false,
        };
        p.done = 1;
        assert_eq!(
            p.line("1 re-encrypted"),
            "rotate-data: [#######-----------------------] 1/4 (25%) 1 re-encrypted"
        );
        let empty = Progress {
            label: "x".into(),
            total: 0,
            done: 0,
            terminal: false,
        };
        assert!(empty.line("").contains("0/0 (100%)"));
    }
}
