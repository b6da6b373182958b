//! Turning the result lines of one L1 run into a verdict on the scenario.

use std::fmt;

use crate::result_line::{self, ResultLine};

/// How the L1 machine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEnd {
    /// QEMU exited by itself with this status (L1 reboots to exit: `-no-reboot`).
    Exited(String),
    /// The hard timeout struck and QEMU was killed.
    TimedOut { after_secs: u64 },
}

/// What a scenario run showed.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Every check reported, in order: name, passed, detail.
    pub checks: Vec<(String, bool, String)>,
    /// Problems that make the scenario fail; empty means it passed.
    pub problems: Vec<String>,
}

impl Verdict {
    /// Judges the console output of one run: every `expected` check must be
    /// reported and passed, no check may fail, the script must reach its end
    /// and the machine must not have been killed by the timeout.
    pub fn judge(console: &str, expected: &[&str], end: &MachineEnd) -> Verdict {
        let mut checks = Vec::new();
        let mut done = false;
        for line in console.lines() {
            match result_line::parse(line) {
                Some(ResultLine::Check {
                    name,
                    passed,
                    detail,
                }) => checks.push((name, passed, detail)),
                Some(ResultLine::Done) => done = true,
                None => {}
            }
        }
        let mut problems: Vec<String> = checks
            .iter()
            .filter(|(_, passed, _)| !passed)
            .map(|(name, _, detail)| format!("check {name} failed: {detail}"))
            .collect();
        for name in expected {
            if !checks.iter().any(|(n, _, _)| n == name) {
                problems.push(format!("check {name} was never reported"));
            }
        }
        if let MachineEnd::TimedOut { after_secs } = end {
            problems.push(format!(
                "L1 was killed by the hard timeout after {after_secs} s"
            ));
        }
        if !done {
            problems
                .push("the scenario script did not reach its end (no `LAB-RESULT done`)".into());
        }
        Verdict { checks, problems }
    }

    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, passed, detail) in &self.checks {
            writeln!(
                f,
                "  {} {name} {detail}",
                if *passed { "pass" } else { "FAIL" }
            )?;
        }
        for problem in &self.problems {
            writeln!(f, "  problem: {problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXITED: MachineEnd = MachineEnd::Exited(String::new());

    #[test]
    fn all_expected_checks_passing_and_done_passes() {
        let log = "boot noise\nLAB-RESULT check a pass\r\nLAB-RESULT check b pass fine\nLAB-RESULT done\n";
        let v = Verdict::judge(log, &["a", "b"], &EXITED);
        assert!(v.passed(), "{v}");
        assert_eq!(v.checks.len(), 2);
    }

    #[test]
    fn a_failed_check_fails_even_if_unexpected() {
        let log = "LAB-RESULT check a pass\nLAB-RESULT check extra fail boom\nLAB-RESULT done\n";
        let v = Verdict::judge(log, &["a"], &EXITED);
        assert!(!v.passed());
        assert!(v.problems[0].contains("extra") && v.problems[0].contains("boom"));
    }

    #[test]
    fn a_missing_check_or_missing_end_fails() {
        let v = Verdict::judge(
            "LAB-RESULT check a pass\nLAB-RESULT done\n",
            &["a", "b"],
            &EXITED,
        );
        assert_eq!(v.problems, ["check b was never reported"]);
        let v = Verdict::judge("LAB-RESULT check a pass\n", &["a"], &EXITED);
        assert!(v.problems[0].contains("did not reach its end"));
    }

    #[test]
    fn a_timeout_fails_even_with_all_checks() {
        let v = Verdict::judge(
            "LAB-RESULT check a pass\nLAB-RESULT done\n",
            &["a"],
            &MachineEnd::TimedOut { after_secs: 9 },
        );
        assert!(!v.passed());
        assert!(v.problems[0].contains("timeout"));
    }
}
