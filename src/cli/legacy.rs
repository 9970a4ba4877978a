//! What the Go tool's users run unchanged: bare `datasync` (the old `./bin/datasync`) and the
//! exit codes of usage errors; plus the JSON-log forms of the plan and the apply report.

use clap::CommandFactory;
use serde_json::{Map, Value};

use super::{ApplyArgs, Cli, Context, ManifestLocation, logging};
use crate::error::ExitStatus;
use crate::manifest;

/// Bare `datasync`: with the legacy variables and no manifest file, `apply` (plan and apply in
/// one go, `DRY_RUN` honoured), as `./bin/datasync` did; otherwise the help, exit 1 (a job that
/// runs nothing must not look successful).
pub(super) fn bare(context: &Context<'_>) -> Result<ExitStatus, crate::error::Error> {
    let legacy = matches!(
        super::locate_manifest(&context.cli.global),
        ManifestLocation::Env
    ) && manifest::env::get(context.env, manifest::env::vars::SYNC_DATABASES)
        .is_some();
    if legacy {
        return super::runtime()?.block_on(super::apply(context, &ApplyArgs::default()));
    }
    let help = Cli::command().render_help().to_string();
    if logging::json_mode() {
        logging::line(
            "error",
            "no command: pass one (validate, plan, apply, …), or set SYNC_DATABASES for the legacy mode",
            Map::new(),
        );
    } else {
        super::print_stderr(&format!("{help}\n"));
    }
    Ok(ExitStatus::UserError)
}

/// A clap error: help and `--version` exit 0; every usage error exits 1 (2 means "changes"
/// with `plan --detailed-exitcode`). In JSON-log mode (`--log-format json` or `LOG_ENV=prod`)
/// the error is one JSON line.
pub(super) fn usage_error(error: &clap::Error) -> ExitStatus {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitStatus::UserError
        } else {
            ExitStatus::Success
        };
    }
    if json_requested() {
        let text = error.render().to_string();
        let msg = text
            .lines()
            .next()
            .unwrap_or("usage error")
            .trim_start_matches("error: ");
        let mut fields = Map::new();
        fields.insert("exit_code".into(), ExitStatus::UserError.code().into());
        fields.insert("usage".into(), Value::String(text.trim_end().to_string()));
        logging::line("error", msg, fields);
    } else {
        let _ = error.print();
    }
    ExitStatus::UserError
}

/// `--log-format json` among the arguments, or `LOG_ENV=prod`, before clap could parse them.
#[expect(
    clippy::disallowed_methods,
    reason = "the CLI reads the environment; the snapshot does not exist yet when parsing failed"
)]
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = args
        .windows(2)
        .any(|pair| pair[0] == "--log-format" && pair[1] == "json")
        || args.iter().any(|arg| arg == "--log-format=json");
    flag || std::env::var("LOG_ENV").is_ok_and(|value| value == "prod")
}

/// The plan as JSON log lines: one per table (`info`, or `error` when it cannot run), one
/// `warn` per orphaned target, then the summary.
pub(super) fn plan_lines(plan: &crate::plan::Plan, stdout: bool) {
    let emit = |level: &str, msg: &str, fields: Map<String, Value>| {
        if stdout {
            logging::stdout_line(level, msg, fields);
        } else {
            logging::line(level, msg, fields);
        }
    };
    for table in &plan.tables {
        let mut fields = Map::new();
        fields.insert("database".into(), table.source.clone().into());
        fields.insert("table".into(), table.label.clone().into());
        fields.insert("target_table".into(), table.target.clone().into());
        fields.insert(
            "action".into(),
            serde_json::to_value(table.action).unwrap_or(Value::Null),
        );
        fields.insert(
            "mode".into(),
            serde_json::to_value(table.mode).unwrap_or(Value::Null),
        );
        fields.insert("estimated_rows".into(), table.estimated_rows.into());
        fields.insert(
            "changes".into(),
            serde_json::to_value(&table.changes).unwrap_or(Value::Null),
        );
        if !table.warnings.is_empty() {
            fields.insert(
                "warnings".into(),
                crate::diagnostic::messages(&table.warnings).into(),
            );
        }
        if table.action.runs() {
            emit("info", "table planned", fields);
        } else {
            fields.insert(
                "error".into(),
                crate::diagnostic::messages(&table.errors).join("; ").into(),
            );
            if let Some(error) = table.errors.first() {
                fields.insert("code".into(), error.code.as_str().into());
            }
            emit("error", "table cannot run", fields);
        }
    }
    for orphan in &plan.orphaned {
        let mut fields = Map::new();
        fields.insert("target_table".into(), orphan.target.clone().into());
        fields.insert("code".into(), orphan.warning.code.as_str().into());
        if let Some(help) = &orphan.warning.help {
            fields.insert("hint".into(), help.clone().into());
        }
        emit("warn", &orphan.warning.message, fields);
    }
    let mut fields = Map::new();
    fields.insert("destination".into(), plan.destination.clone().into());
    fields.insert("tables".into(), plan.tables.len().into());
    fields.insert("changes".into(), plan.has_changes().into());
    fields.insert(
        "blocked".into(),
        plan.tables
            .iter()
            .filter(|table| !table.action.runs())
            .count()
            .into(),
    );
    if !plan.orphaned.is_empty() {
        fields.insert("orphaned".into(), plan.orphaned.len().into());
    }
    emit("info", "plan", fields);
}

/// The apply report as JSON log lines on stdout: one per table, with the run id and the job id,
/// then the summary with the Go tool's keys.
pub(super) fn report_lines(report: &crate::sync::ApplyReport, run_id: &str) {
    for table in &report.tables {
        let mut fields = logging::fields(serde_json::to_value(table).unwrap_or(Value::Null));
        fields.insert("run_id".into(), run_id.into());
        let database = table.table.split_once('.').map_or("", |(source, _)| source);
        fields.insert("database".into(), database.into());
        fields.insert("target_table".into(), table.target.clone().into());
        fields.insert(
            "job_id".into(),
            crate::sync::load_job_id(run_id, &table.target).into(),
        );
        fields.insert("rows".into(), table.rows_extracted.into());
        fields.insert("duration".into(), format!("{:.3}s", table.seconds).into());
        let (level, msg) = match table.status {
            crate::sync::TableStatus::Done => ("info", "table report: synced"),
            crate::sync::TableStatus::Failed => ("error", "table report: failed"),
            crate::sync::TableStatus::Skipped => ("error", "table report: skipped"),
        };
        logging::stdout_line(level, msg, fields);
    }
    let failed = report
        .tables
        .iter()
        .filter(|table| table.status != crate::sync::TableStatus::Done)
        .count();
    let mut fields = Map::new();
    fields.insert("run_id".into(), run_id.into());
    fields.insert("destination".into(), report.destination.clone().into());
    fields.insert("dry_run".into(), report.dry_run.into());
    fields.insert("successful".into(), (report.tables.len() - failed).into());
    fields.insert("failed".into(), failed.into());
    fields.insert(
        "rows".into(),
        report
            .tables
            .iter()
            .map(|table| table.rows_extracted)
            .sum::<u64>()
            .into(),
    );
    fields.insert("duration".into(), format!("{:.3}s", report.seconds).into());
    if failed == 0 {
        logging::stdout_line("info", "Data sync completed successfully", fields);
    } else {
        logging::stdout_line("error", "One or more sync jobs failed", fields);
    }
}

/// The first line of a run, as the Go tool's `Starting BigQuery Data Sync Tool`.
pub(super) fn start_line(command: &str) {
    let mut fields = Map::new();
    fields.insert("version".into(), logging::VERSION.into());
    fields.insert("build_time".into(), logging::BUILD_TIME.into());
    fields.insert("git_commit".into(), logging::GIT_COMMIT.into());
    fields.insert("command".into(), command.into());
    if logging::json_mode() {
        logging::line("info", "Starting BigQuery Data Sync Tool", fields);
    } else {
        tracing::debug!(
            version = logging::VERSION,
            build_time = logging::BUILD_TIME,
            git_commit = logging::GIT_COMMIT,
            command,
            "starting"
        );
    }
}
