//! The one top-level error of a datasync command, and the one place that picks exit codes.
//!
//! Each variant's message is what the CLI prints after `error: `; [`Error::hint`] is the remedy
//! (already part of the message where the CLI has always printed it), and
//! [`Error::exit_status`] the process exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::manifest::LoadFailure;
use crate::source::SourceError;
use crate::warehouse::WarehouseError;

/// How a command ended, as the process exit code (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ExitStatus {
    /// Success (and, with `plan --detailed-exitcode`, no changes).
    Success = 0,
    /// The user's input is wrong: invalid manifest or environment, blocked or stale plan.
    UserError = 1,
    /// `plan --detailed-exitcode`: there are changes.
    Changes = 2,
    /// Something failed at run time: a source, BigQuery, or a table during apply.
    Failure = 3,
}

impl ExitStatus {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

const REPLAN: &str = "run `datasync plan --out` again";
const PARTIAL: &str = "each target table holds either its previous content or, if its write had completed, the new one — never a partial load";

/// A saved plan (`apply plan.json`) that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    /// The file cannot be read.
    #[error("cannot read plan `{}`: {source}", path.display())]
    Unreadable {
        /// The plan file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a plan, another version's, edited, or stale ([`crate::plan::stale`]).
    #[error("cannot apply `{}`: {reason}\n{REPLAN}", path.display())]
    Rejected {
        /// The plan file.
        path: PathBuf,
        /// Why.
        reason: crate::plan::stale::SavedPlanError,
    },
}

/// Everything that can stop a datasync command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest did not load; the failure holds every problem (rendered separately).
    #[error("the manifest has {} problem(s)", .0.problems.len())]
    Manifest(Box<LoadFailure>),
    /// Wrong input that is not in the manifest: no manifest found, an unknown file format, an
    /// unreadable env file, a command that needs the legacy environment.
    #[error("{0}")]
    Usage(String),
    /// The manifest file cannot be read.
    #[error("cannot read manifest `{}`: {source}", path.display())]
    ManifestUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--table` names tables the manifest does not have.
    #[error(
        "unknown table(s) {}; the manifest has: {}",
        unknown.iter().map(|(name, close)| match close {
            Some(close) => format!("`{name}` (did you mean `{close}`?)"),
            None => format!("`{name}`"),
        }).collect::<Vec<_>>().join(", "),
        known.join(", ")
    )]
    UnknownTables {
        /// The names or patterns that select nothing, as given, each with the closest known
        /// table, if one is close.
        unknown: Vec<(String, Option<String>)>,
        /// Every table of the manifest (`source.table`).
        known: Vec<String>,
    },
    /// A saved plan that cannot be applied.
    #[error(transparent)]
    SavedPlan(#[from] SavedPlanError),
    /// A source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// BigQuery failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// A file could not be written or read.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The apply was stopped by a signal (named).
    #[error("apply interrupted by {0}; {PARTIAL}")]
    Interrupted(&'static str),
    /// Connecting and planning ran past the manifest's `timeout`.
    #[error("timed out after {} (manifest `timeout`) while connecting and planning", humantime::format_duration(*.0))]
    PlanTimedOut(Duration),
    /// The apply ran past the manifest's `timeout`.
    #[error("apply timed out after {}; {PARTIAL}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// BigQuery failed while connecting or planning, with what was being done.
    #[error("{context}: {source}")]
    Planning {
        /// What was being done (`dataset \`p.d\``, `target \`t\``).
        context: String,
        /// Why.
        source: Box<WarehouseError>,
    },
    /// Anything else that should not happen (the async runtime, serializing output).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Manifest(_)
            | Self::Usage(_)
            | Self::ManifestUnreadable { .. }
            | Self::UnknownTables { .. }
            | Self::SavedPlan(_) => ExitStatus::UserError,
            Self::Source(_)
            | Self::Warehouse(_)
            | Self::Io { .. }
            | Self::Interrupted(_)
            | Self::TimedOut(_)
            | Self::PlanTimedOut(_)
            | Self::Planning { .. }
            | Self::Internal(_) => ExitStatus::Failure,
        }
    }

    /// How to fix it, when there is a known remedy.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Manifest(_) => {
                Some("fix the problems above; `datasync validate` checks offline".into())
            }
            Self::UnknownTables { .. } => {
                Some("name tables as `source.table`, as `datasync plan` lists them".into())
            }
            Self::SavedPlan(SavedPlanError::Rejected { .. }) => Some(REPLAN.into()),
            Self::Interrupted(_) | Self::TimedOut(_) => Some("run `datasync apply` again".into()),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<LoadFailure> for Error {
    fn from(failure: LoadFailure) -> Self {
        Self::Manifest(Box::new(failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::stale::SavedPlanError as Rejection;

    #[test]
    fn exit_statuses_keep_their_numbers() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::UserError.code(), 1);
        assert_eq!(ExitStatus::Changes.code(), 2);
        assert_eq!(ExitStatus::Failure.code(), 3);
    }

    #[test]
    fn messages_statuses_and_hints() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let errors = [
            Error::Usage("no manifest".into()),
            Error::ManifestUnreadable {
                path: "sync.yaml".into(),
                source: io(),
            },
            Error::UnknownTables {
                unknown: vec![
                    ("pg.nope".into(), None),
                    ("pg.bb".into(), Some("pg.b".into())),
                ],
                known: vec!["pg.a".into(), "pg.b".into()],
            },
            SavedPlanError::Unreadable {
                path: "plan.json".into(),
                source: io(),
            }
            .into(),
            SavedPlanError::Rejected {
                path: "plan.json".into(),
                reason: Rejection::NotAPlan("expected value at line 1 column 1".into()),
            }
            .into(),
            SavedPlanError::Rejected {
                path: "plan.json".into(),
                reason: Rejection::Edited,
            }
            .into(),
            SavedPlanError::Rejected {
                path: "plan.json".into(),
                reason: Rejection::OtherVersion {
                    saved_version: "0.0.1".into(),
                    saved_format: 1,
                },
            }
            .into(),
            SavedPlanError::Rejected {
                path: "plan.json".into(),
                reason: Rejection::Stale(vec![
                    "pg.a: the source changed".into(),
                    "pg.b: gone".into(),
                ]),
            }
            .into(),
            Error::Io {
                action: "write",
                path: "plan.json".into(),
                source: io(),
            },
            Error::Interrupted("SIGTERM"),
            Error::TimedOut(Duration::from_secs(900)),
            Error::Planning {
                context: "dataset `p.ds`".into(),
                source: Box::new(WarehouseError::Invalid("no such dataset".into())),
            },
            Error::Internal("cannot start the async runtime: x".into()),
        ];
        let text: String = errors
            .iter()
            .map(|error| {
                format!(
                    "[{}] error: {}\n    hint: {}\n",
                    error.exit_status().code(),
                    error,
                    error.hint().unwrap_or_default()
                )
            })
            .collect();
        insta::assert_snapshot!(text);
    }
}
