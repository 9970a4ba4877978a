//! Terraform's conventions: its single-dash spellings (`-out`, `-auto-approve`, …) and the
//! `yes` confirmation before an `apply` without a saved plan.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};

/// Terraform's single-dash long options that `datasync` also accepts; clap would read `-out` as
/// `-o -u -t`.
const SINGLE_DASH: &[&str] = &[
    "out",
    "auto-approve",
    "parallelism",
    "lock-timeout",
    "detailed-exitcode",
];

/// Rewrites `-out FILE`, `-out=FILE`, `-auto-approve`, … to their `--` spelling; everything after
/// `--` is left alone.
pub(super) fn normalize(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut rest = false;
    args.into_iter()
        .map(|arg| {
            if rest {
                return arg;
            }
            let Some(text) = arg.to_str() else {
                return arg;
            };
            if text == "--" {
                rest = true;
                return arg;
            }
            let Some(long) = text.strip_prefix('-').filter(|long| !long.starts_with('-')) else {
                return arg;
            };
            let name = long.split_once('=').map_or(long, |(name, _)| name);
            if SINGLE_DASH.contains(&name) {
                OsString::from(format!("-{text}"))
            } else {
                arg
            }
        })
        .collect()
}

/// The question Terraform asks before applying a fresh plan.
pub(super) const QUESTION: &str = "Do you want to perform these actions?\n  datasync will perform the actions described above.\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ";

/// Whether to ask: only when stdin is a terminal (a CI job or a pipe never waits for an answer).
pub(super) fn should_ask() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks on stderr and reads one line from stdin: `true` only for `yes`.
pub(super) fn confirm() -> bool {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(QUESTION.as_bytes());
    let _ = stderr.flush();
    drop(stderr);
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    approved(&answer)
}

/// `yes` (surrounding blanks ignored) approves; anything else, `y` included, does not.
pub(super) fn approved(answer: &str) -> bool {
    answer.trim() == "yes"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        normalize(args.iter().map(OsString::from))
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    #[test]
    fn terraform_single_dash_options_become_double_dash() {
        assert_eq!(
            strings(&[
                "datasync",
                "plan",
                "-out",
                "p.json",
                "-lock-timeout=5s",
                "-c",
                "x.yaml"
            ]),
            [
                "datasync",
                "plan",
                "--out",
                "p.json",
                "--lock-timeout=5s",
                "-c",
                "x.yaml"
            ]
        );
        assert_eq!(
            strings(&[
                "datasync",
                "apply",
                "-auto-approve",
                "-parallelism=2",
                "--",
                "-out"
            ]),
            [
                "datasync",
                "apply",
                "--auto-approve",
                "--parallelism=2",
                "--",
                "-out"
            ]
        );
        assert_eq!(
            strings(&["datasync", "-v", "-q", "--out=x"]),
            ["datasync", "-v", "-q", "--out=x"]
        );
    }

    #[test]
    fn only_yes_approves() {
        assert!(approved("yes\n"));
        assert!(approved("  yes \r\n"));
        for answer in ["y\n", "YES\n", "no\n", "", "yess\n"] {
            assert!(!approved(answer), "{answer:?}");
        }
    }
}
