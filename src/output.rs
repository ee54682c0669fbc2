//! Text output for people: aligned sections, colour only on a terminal (anstream drops the
//! escapes when stdout is not one, or when NO_COLOR is set).

use std::fmt::{self, Display, Write as _};

use anstyle::{AnsiColor, Style};

pub const GOOD: Style = AnsiColor::Green.on_default().bold();
pub const BAD: Style = AnsiColor::Red.on_default().bold();
pub const WARN: Style = AnsiColor::Yellow.on_default().bold();
pub const HEADING: Style = Style::new().bold();
pub const DIM: Style = Style::new().dimmed();

/// `text` in `style`; the escapes are removed later if the output is not a colour terminal.
pub fn paint(style: Style, text: impl Display) -> String {
    format!("{}{text}{}", style.render(), style.render_reset())
}

/// A titled block of `label  value  note` rows, aligned.
#[derive(Debug, Default)]
pub struct Section {
    title: String,
    rows: Vec<(String, String, String)>,
}

impl Section {
    pub fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub fn row(
        &mut self,
        label: impl Display,
        value: impl Display,
        note: impl Display,
    ) -> &mut Section {
        self.rows
            .push((label.to_string(), value.to_string(), note.to_string()));
        self
    }
}

/// Visible width of text that may hold ANSI escapes.
pub fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

fn pad(text: &str, width: usize) -> String {
    let mut out = text.to_string();
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(visible_width(text)),
    ));
    out
}

impl Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.title.is_empty() {
            writeln!(f, "{}", paint(HEADING, &self.title))?;
        }
        let label_width = self
            .rows
            .iter()
            .map(|r| visible_width(&r.0))
            .max()
            .unwrap_or(0)
            .max(14);
        let value_width = self
            .rows
            .iter()
            .map(|r| visible_width(&r.1))
            .max()
            .unwrap_or(0)
            .max(12);
        for (label, value, note) in &self.rows {
            let mut line = format!("  {}  {}", pad(label, label_width), pad(value, value_width));
            if !note.is_empty() {
                write!(line, "  {}", paint(DIM, note))?;
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_align_values_ignoring_colour() {
        let mut s = Section::new("Policy");
        s.row("mode", paint(GOOD, "heuristic (0)"), "");
        s.row("CommitLimit", "11.7 GiB", "kernel");
        let text = s.to_string();
        let plain: Vec<String> = text
            .lines()
            .map(|l| {
                let mut out = String::new();
                let mut esc = false;
                for c in l.chars() {
                    match (esc, c) {
                        (false, '\x1b') => esc = true,
                        (true, 'm') => esc = false,
                        (true, _) => {}
                        (false, c) => out.push(c),
                    }
                }
                out
            })
            .collect();
        assert_eq!(plain[1].find("heuristic"), plain[2].find("11.7"));
        assert!(plain[2].ends_with("kernel"));
    }
}
