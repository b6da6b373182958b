//! The machine-readable result lines a lab scenario prints on L1's serial console.
//!
//! ```text
//! LAB-RESULT check NAME pass [DETAIL...]
//! LAB-RESULT check NAME fail [DETAIL...]
//! LAB-RESULT done
//! ```
//!
//! `NAME` is one word (letters, digits, `-`, `_`, `.`). The shell side of the protocol
//! is `lab_check` / `lab_pass` / `lab_fail` in the L1 init (`lab/l1-lib.sh`).

/// Every result line starts with this word.
pub const PREFIX: &str = "LAB-RESULT";

/// One parsed result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultLine {
    /// A named check and whether it passed.
    Check {
        name: String,
        passed: bool,
        detail: String,
    },
    /// The scenario script ran to its end.
    Done,
}

/// The line reporting check `name`.
pub fn check_line(name: &str, passed: bool, detail: &str) -> String {
    let verdict = if passed { "pass" } else { "fail" };
    let detail = detail.replace(['\n', '\r'], " ");
    if detail.is_empty() {
        format!("{PREFIX} check {name} {verdict}")
    } else {
        format!("{PREFIX} check {name} {verdict} {detail}")
    }
}

/// Parses one console line; `None` for anything that is not a well-formed result line.
/// The prefix may be preceded by other output on the same line (the serial console
/// interleaves kernel and firmware messages that do not always end their lines), but
/// not glued to a word.
pub fn parse(line: &str) -> Option<ResultLine> {
    let line = strip_escapes(line);
    let line = line.trim_end_matches(['\r', '\n']);
    let start = line.find(PREFIX)?;
    if line[..start]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    let mut words = line[start + PREFIX.len()..].trim_start().splitn(4, ' ');
    match words.next()? {
        "done" => Some(ResultLine::Done),
        "check" => {
            let name = words.next()?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return None;
            }
            let passed = match words.next()? {
                "pass" => true,
                "fail" => false,
                _ => return None,
            };
            Some(ResultLine::Check {
                name: name.to_owned(),
                passed,
                detail: words.next().unwrap_or("").trim().to_owned(),
            })
        }
        _ => None,
    }
}

/// `line` without terminal escape sequences (firmware and the kernel clear the
/// screen on the serial console, which glues `ESC c ESC [2J` to the next line).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI (ESC [ ...) runs to a final byte in @..~; any other escape is two
        // characters (such as ESC c, reset), dropped by taking the second here.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_lines_round_trip() {
        let line = check_line("dma-round-trip", false, "byte 3 differs\nsecond line");
        assert_eq!(
            parse(&line),
            Some(ResultLine::Check {
                name: "dma-round-trip".into(),
                passed: false,
                detail: "byte 3 differs second line".into()
            })
        );
        assert_eq!(
            parse(&check_line("kvm-api", true, "")),
            Some(ResultLine::Check {
                name: "kvm-api".into(),
                passed: true,
                detail: String::new()
            })
        );
        assert_eq!(parse("LAB-RESULT done\r"), Some(ResultLine::Done));
    }

    #[test]
    fn malformed_lines_are_not_results() {
        for line in [
            "",
            "LAB-RESULT",
            "LAB-RESULT check",
            "LAB-RESULT check x maybe",
            "LAB-RESULT check bad/name pass",
            "LAB-RESULT finished",
            "echo XLAB-RESULT done",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn terminal_escapes_before_a_result_are_ignored() {
        assert_eq!(
            parse("\x1bc\x1b[?7l\x1b[2JLAB-RESULT done"),
            Some(ResultLine::Done)
        );
    }

    #[test]
    fn results_after_interleaved_kernel_output_are_found() {
        assert_eq!(parse("[    3.1] x LAB-RESULT done"), Some(ResultLine::Done));
    }
}
