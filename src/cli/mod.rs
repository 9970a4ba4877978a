//! The command line: argument parsing, environment snapshot, logging set-up, printing and exit
//! codes. The only module that touches the process environment or prints.

mod effective;
mod progress;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::diagnostic::{Diagnostic, Severity};
use crate::error::{Error, ExitStatus, SavedPlanError};
use crate::manifest::{self, Env, Format, Loaded, ManifestInput, SourceText};

/// Sync MySQL/MariaDB, PostgreSQL and SQLite tables into BigQuery, Terraform-style.
#[derive(Debug, Parser)]
#[command(name = "datasync", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options for every command.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Manifest file (YAML or TOML, by extension). Default: `sync.yaml`, `sync.yml` or
    /// `sync.toml` in the current directory; without one, the legacy env-only mode
    /// (SYNC_DATABASES, …).
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Read variables from this file (it never overrides variables already set).
    /// Default: `.env` in the current directory, if present.
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. Default: LOG_LEVEL, else `warn`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format. Default: `json` when LOG_ENV=prod, else `text`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Colours in diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a manifest offline: JSON Schema plus semantic checks, every problem at once.
    Validate(ValidateArgs),
    /// Show what `apply` would do (needs the sources and BigQuery).
    Plan(PlanArgs),
    /// Execute a plan: a saved one (`apply plan.json`) or a fresh one.
    Apply(ApplyArgs),
    /// Print the manifest's JSON Schema.
    Schema,
    /// Print the manifest equivalent to the legacy environment variables.
    EnvToManifest(EnvToManifestArgs),
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Print the resolved manifest, each value with its origin (file, env, default); secrets
    /// redacted.
    #[arg(long)]
    show_effective: bool,
    /// Output format: `json` prints one document on stdout with every problem (line, column,
    /// code) and, with `--show-effective`, the effective values.
    #[arg(long, value_enum, default_value_t = DataFormat::Text)]
    format: DataFormat,
    /// Treat warnings as errors.
    #[arg(long)]
    deny_warnings: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DataFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// Save the plan (JSON, fingerprinted) for `datasync apply FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Exit 0 when no schema changes, 2 when there are changes, 1 on errors.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Only these tables (`source.table`, as in the plan; repeatable).
    #[arg(long = "table", value_name = "SOURCE.TABLE")]
    tables: Vec<String>,
    /// Run only this shard's tables: `INDEX/COUNT` (0-based). Tables are assigned by a stable
    /// hash of `source.table`. Default: from `JOB_COMPLETION_INDEX` (with `--shard-count`) or
    /// `CLOUD_RUN_TASK_INDEX`/`CLOUD_RUN_TASK_COUNT`; none = every table.
    #[arg(long, value_name = "INDEX/COUNT")]
    shard: Option<String>,
    /// The number of shards when the index comes from `JOB_COMPLETION_INDEX` (a Kubernetes
    /// Indexed Job's `completions`).
    #[arg(long, value_name = "COUNT")]
    shard_count: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// A plan saved by `plan --out`; apply refuses it if the sources or targets changed since.
    plan: Option<PathBuf>,
    /// Extract and encode every row without writing to BigQuery. Also DRY_RUN=true.
    #[arg(long)]
    dry_run: bool,
    /// Format of the final report on stdout.
    #[arg(long, value_enum, default_value_t = DataFormat::Text)]
    format: DataFormat,
    /// Only these tables (`source.table`, as in the plan; repeatable). Not with a saved plan.
    #[arg(long = "table", value_name = "SOURCE.TABLE", conflicts_with = "plan")]
    tables: Vec<String>,
    /// Run only this shard's tables: `INDEX/COUNT` (0-based). Tables are assigned by a stable
    /// hash of `source.table`. Default: from `JOB_COMPLETION_INDEX` (with `--shard-count`) or
    /// `CLOUD_RUN_TASK_INDEX`/`CLOUD_RUN_TASK_COUNT`; none = every table.
    #[arg(long, value_name = "INDEX/COUNT")]
    shard: Option<String>,
    /// The number of shards when the index comes from `JOB_COMPLETION_INDEX` (a Kubernetes
    /// Indexed Job's `completions`).
    #[arg(long, value_name = "COUNT")]
    shard_count: Option<u64>,
}

#[derive(Debug, Args)]
struct EnvToManifestArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ManifestFormat::Yaml)]
    format: ManifestFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ManifestFormat {
    Yaml,
    Toml,
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match load_env_file(cli.global.env_file.as_deref()) {
        Err(error) => report(&cli.global, &Env::new(), &error),
        Ok(()) => {
            let env = snapshot_env();
            init_logging(&cli.global, &env);
            match run(&cli, &env) {
                Ok(status) => status,
                Err(error) => report(&cli.global, &env, &error),
            }
        }
    };
    status.into()
}

/// Prints `error` (a manifest failure as located diagnostics) and returns its exit status.
fn report(global: &GlobalArgs, env: &Env, error: &Error) -> ExitStatus {
    match error {
        Error::Manifest(failure) => {
            print_problems(global, env, &failure.problems, failure.source.as_ref());
        }
        other => eprintln!("error: {other}"),
    }
    error.exit_status()
}

/// Renders diagnostics to stderr (nothing when there are none).
fn print_problems(
    global: &GlobalArgs,
    env: &Env,
    problems: &[Diagnostic],
    source: Option<&SourceText>,
) {
    if problems.is_empty() {
        return;
    }
    print_stderr(&manifest::diagnostics::render(
        problems,
        source,
        color(global, env),
        diagnostic_width(env),
    ));
}

fn load_env_file(path: Option<&Path>) -> Result<(), Error> {
    match path {
        Some(path) => dotenvy::from_path(path).map_err(|error| {
            Error::Usage(format!(
                "cannot read env file `{}`: {error}",
                path.display()
            ))
        }),
        None => match dotenvy::dotenv() {
            Ok(_) => Ok(()),
            Err(error) if error.not_found() => Ok(()),
            Err(error) => Err(Error::Usage(format!("cannot read `.env`: {error}"))),
        },
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "the CLI is where the environment is read, once"
)]
fn snapshot_env() -> Env {
    std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

fn init_logging(global: &GlobalArgs, env: &Env) {
    let level = global
        .log_level
        .clone()
        .or_else(|| manifest::env::get(env, "LOG_LEVEL").map(str::to_string))
        .unwrap_or_else(|| "warn".into());
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("datasync={level},sqlx=error,warn"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let json = match global.log_format {
        Some(format) => format == LogFormat::Json,
        None => manifest::env::get(env, "LOG_ENV") == Some("prod"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
    }
}

fn color(global: &GlobalArgs, env: &Env) -> bool {
    match global.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => !env.contains_key("NO_COLOR") && std::io::stderr().is_terminal(),
    }
}

fn diagnostic_width(env: &Env) -> usize {
    env.get("COLUMNS")
        .and_then(|columns| columns.parse().ok())
        .unwrap_or(100)
}

fn run(cli: &Cli, env: &Env) -> Result<ExitStatus, Error> {
    match &cli.command {
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&manifest::json_schema())?;
            print_stdout(&format!("{schema}\n"));
            Ok(ExitStatus::Success)
        }
        Command::Validate(args) => validate(cli, env, args),
        Command::EnvToManifest(args) => env_to_manifest(cli, env, args),
        Command::Plan(args) => runtime()?.block_on(plan(cli, env, args)),
        Command::Apply(args) => runtime()?.block_on(apply(cli, env, args)),
    }
}

/// Where the manifest comes from.
#[derive(Debug)]
pub enum ManifestLocation {
    /// A file.
    File(PathBuf),
    /// The legacy env-only mode.
    Env,
}

fn locate_manifest(global: &GlobalArgs) -> ManifestLocation {
    if let Some(path) = &global.config {
        return ManifestLocation::File(path.clone());
    }
    ["sync.yaml", "sync.yml", "sync.toml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .map_or(ManifestLocation::Env, ManifestLocation::File)
}

fn manifest_input(global: &GlobalArgs, env: &Env) -> Result<ManifestInput, Error> {
    match locate_manifest(global) {
        ManifestLocation::File(path) => {
            let format = Format::from_path(&path).ok_or_else(|| {
                Error::Usage(format!(
                    "cannot tell the format of `{}`: use a .yaml, .yml or .toml file",
                    path.display()
                ))
            })?;
            let text =
                std::fs::read_to_string(&path).map_err(|source| Error::ManifestUnreadable {
                    path: path.clone(),
                    source,
                })?;
            Ok(ManifestInput {
                name: Some(path.display().to_string()),
                text: Some((text, format)),
                env: env.clone(),
            })
        }
        ManifestLocation::Env => {
            if manifest::env::get(env, manifest::env::vars::SYNC_DATABASES).is_none() {
                return Err(Error::Usage(
                    "no manifest: pass `-c sync.yaml`, create `sync.yaml` here, or set SYNC_DATABASES (legacy env-only mode)"
                        .into(),
                ));
            }
            Ok(legacy_input(env))
        }
    }
}

fn legacy_input(env: &Env) -> ManifestInput {
    ManifestInput {
        name: None,
        text: None,
        env: env.clone(),
    }
}

/// Loads the manifest, printing its warnings.
fn load_manifest(global: &GlobalArgs, env: &Env) -> Result<Loaded, Error> {
    let input = manifest_input(global, env)?;
    let loaded = manifest::load(&input)?;
    print_problems(global, env, &loaded.warnings, loaded.source.as_ref());
    warn_if_legacy(&loaded);
    Ok(loaded)
}

fn warn_if_legacy(loaded: &Loaded) {
    if loaded.mode == manifest::EnvMode::Legacy {
        tracing::warn!(
            "using the legacy env-only mode; run `datasync env-to-manifest > sync.yaml` to switch to a manifest"
        );
    }
}

/// `validate`: every problem on stderr for humans; with `--format json` also one JSON document
/// on stdout with every problem located by line, column and code (and the effective values
/// with `--show-effective`).
fn validate(cli: &Cli, env: &Env, args: &ValidateArgs) -> Result<ExitStatus, Error> {
    let input = manifest_input(&cli.global, env)?;
    let outcome = manifest::load(&input);
    let (problems, source) = match &outcome {
        Ok(loaded) => (loaded.warnings.as_slice(), loaded.source.as_ref()),
        Err(failure) => (failure.problems.as_slice(), failure.source.as_ref()),
    };
    print_problems(&cli.global, env, problems, source);
    let warnings = problems
        .iter()
        .filter(|problem| problem.severity == Severity::Warning)
        .count();
    let mode = if input.text.is_some() {
        "manifest"
    } else {
        "legacy environment"
    };
    let loaded = outcome.as_ref().ok();
    match args.format {
        DataFormat::Json => {
            let mut document = serde_json::json!({
                "valid": loaded.is_some(),
                "mode": mode,
                "problems": manifest::diagnostics::to_json(problems, source),
            });
            if let Some(loaded) = loaded {
                document["sources"] = loaded.manifest.sources.len().into();
                document["tables"] = loaded.manifest.tables.len().into();
                if args.show_effective {
                    document["effective"] =
                        serde_json::to_value(effective::effective_values(loaded))?;
                }
            }
            print_stdout(&format!("{}\n", serde_json::to_string_pretty(&document)?));
        }
        DataFormat::Text => {
            if let Some(loaded) = loaded {
                warn_if_legacy(loaded);
                if args.show_effective {
                    print_stdout(&effective::render_text(&effective::effective_values(
                        loaded,
                    )));
                }
                eprintln!("{}", validate_summary(mode, loaded, warnings));
            }
        }
    }
    Ok(match loaded {
        None => ExitStatus::UserError,
        Some(_) if args.deny_warnings && warnings > 0 => ExitStatus::UserError,
        Some(_) => ExitStatus::Success,
    })
}

fn validate_summary(mode: &str, loaded: &Loaded, warnings: usize) -> String {
    let enabled = loaded
        .manifest
        .tables
        .iter()
        .filter(|table| table.enabled)
        .count();
    format!(
        "valid {mode}: {} source(s), {enabled} table(s) enabled of {}{}",
        loaded.manifest.sources.len(),
        loaded.manifest.tables.len(),
        if warnings > 0 {
            format!(", {warnings} warning(s)")
        } else {
            String::new()
        }
    )
}

fn env_to_manifest(_cli: &Cli, env: &Env, args: &EnvToManifestArgs) -> Result<ExitStatus, Error> {
    if manifest::env::get(env, manifest::env::vars::SYNC_DATABASES).is_none() {
        return Err(Error::Usage(
            "SYNC_DATABASES is not set: there is no legacy configuration to convert".into(),
        ));
    }
    let loaded = manifest::load(&legacy_input(env))?;
    let text = effective::manifest_from_env(&loaded, args.format == ManifestFormat::Toml)
        .map_err(Error::Internal)?;
    print_stdout(&text);
    Ok(ExitStatus::Success)
}

/// Writes to stdout, ignoring a closed pipe.
pub fn print_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes to stderr.
pub fn print_stderr(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::Internal(format!("cannot start the async runtime: {error}")))
}

/// Keeps only the tables named with `--table`; an unknown name is an error listing the known
/// ones.
fn select_tables(
    manifest: &mut crate::manifest::Manifest,
    selected: &[String],
) -> Result<(), Error> {
    if selected.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = manifest
        .tables
        .iter()
        .map(crate::manifest::TableSpec::label)
        .collect();
    let unknown: Vec<String> = selected
        .iter()
        .filter(|name| !known.contains(name))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(Error::UnknownTables { unknown, known });
    }
    for table in &mut manifest.tables {
        if !selected.contains(&table.label()) {
            table.enabled = false;
        }
    }
    Ok(())
}

/// What `plan` and `apply` share: the manifest with `--table` applied, connected and planned
/// within the manifest's `timeout` (which covers connecting and planning, not only the executor);
/// the deadline is returned for the rest of the run.
async fn prepare(
    cli: &Cli,
    env: &Env,
    tables: &[String],
    shard: Option<crate::plan::shard::Shard>,
) -> Result<
    (
        Loaded,
        crate::sync::Session,
        crate::plan::Plan,
        Option<tokio::time::Instant>,
    ),
    Error,
> {
    let mut loaded = load_manifest(&cli.global, env)?;
    select_tables(&mut loaded.manifest, tables)?;
    if let Some(shard) = shard {
        // Other shards' tables are left out before connecting: not introspected, not planned.
        loaded
            .manifest
            .tables
            .retain(|table| shard.owns(&table.label()));
    }
    let limit = loaded.manifest.timeout;
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let (session, plan) = within(limit, deadline, async {
        let session = crate::sync::connect(&loaded.manifest).await?;
        let plan = crate::sync::planner::plan(&loaded.manifest, &session).await?;
        Ok((session, plan))
    })
    .await?;
    Ok((loaded, session, plan, deadline))
}

async fn plan(cli: &Cli, env: &Env, args: &PlanArgs) -> Result<ExitStatus, Error> {
    let shard = shard(env, args.shard.as_deref(), args.shard_count)?;
    let (_loaded, _session, plan, _deadline) = prepare(cli, env, &args.tables, shard).await?;
    let text = match args.format {
        PlanFormat::Text => crate::plan::render::text(&plan),
        PlanFormat::Markdown => crate::plan::render::markdown(&plan),
        PlanFormat::Json => format!("{}\n", serde_json::to_string_pretty(&plan)?),
    };
    print_stdout(&text);
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&plan)?;
        std::fs::write(path, json).map_err(|source| Error::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        eprintln!(
            "saved the plan to `{}`; run `datasync apply {}`",
            path.display(),
            path.display()
        );
    }
    Ok(if plan.has_errors() {
        ExitStatus::UserError
    } else if args.detailed_exitcode && plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    })
}

/// Reads a plan saved by `plan --out` and checks it still matches `fresh`.
/// This run's shard (`--shard`, `--shard-count`, the job environment), if any.
fn shard(
    env: &Env,
    flag: Option<&str>,
    count: Option<u64>,
) -> Result<Option<crate::plan::shard::Shard>, Error> {
    crate::plan::shard::Shard::resolve(flag, count, env)
        .map_err(|reason| Error::Usage(format!("invalid shard: {reason}")))
}

/// The saved plan at `path` (only this shard's tables of it), if it still holds.
fn saved_plan(
    path: &Path,
    fresh: &crate::plan::Plan,
    shard: Option<crate::plan::shard::Shard>,
) -> Result<crate::plan::Plan, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| SavedPlanError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    crate::plan::stale::read_saved(&text)
        .map(|mut saved| {
            if let Some(shard) = shard {
                saved.tables.retain(|table| shard.owns(&table.label));
            }
            saved
        })
        .and_then(|saved| crate::plan::stale::check_fresh(&saved, fresh).map(|()| saved))
        .map_err(|reason| {
            SavedPlanError::Rejected {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        })
}

async fn apply(cli: &Cli, env: &Env, args: &ApplyArgs) -> Result<ExitStatus, Error> {
    let shard = shard(env, args.shard.as_deref(), args.shard_count)?;
    let (loaded, session, fresh, deadline) = prepare(cli, env, &args.tables, shard).await?;
    // An invalid DRY_RUN already failed the manifest load.
    let dry_run_env = manifest::env::get(env, manifest::env::vars::DRY_RUN)
        .is_some_and(|value| manifest::env::parse_bool(value) == Ok(true));
    let dry_run = if args.dry_run || dry_run_env {
        crate::sync::DryRun::Yes
    } else {
        crate::sync::DryRun::No
    };
    let plan = match &args.plan {
        None => fresh,
        Some(path) => saved_plan(path, &fresh, shard)?,
    };
    print_stderr(&crate::plan::render::text(&plan));
    let labels: Vec<String> = plan
        .tables
        .iter()
        .filter(|table| table.action.runs())
        .map(|table| table.label.clone())
        .collect();
    let (progress, bars) = progress::progress(&labels);
    let executor = crate::sync::Executor {
        sources: session.sources.clone(),
        warehouse: std::sync::Arc::clone(&session.warehouse),
        parallelism: usize::try_from(loaded.manifest.parallelism).unwrap_or(1),
        dry_run,
        progress,
        run_id: crate::sync::new_run_id(),
    };
    let run = executor.run(&plan);
    let report = tokio::select! {
        report = async {
            match (loaded.manifest.timeout, deadline) {
                (Some(limit), Some(deadline)) => tokio::time::timeout_at(deadline, run).await.map_err(|_| Error::TimedOut(limit)),
                _ => Ok(run.await),
            }
        } => report,
        signal = shutdown_signal() => Err(Error::Interrupted(signal)),
    };
    if let Some(bars) = bars {
        let _ = bars.clear();
    }
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            executor.abort(&plan).await;
            return Err(error);
        }
    };
    match args.format {
        DataFormat::Text => print_stdout(&report.text()),
        DataFormat::Json => print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
    }
    Ok(if report.succeeded() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// Runs `work` (connecting, planning) by `deadline` (default: `limit` from now), if any.
async fn within<T>(
    limit: Option<std::time::Duration>,
    deadline: Option<tokio::time::Instant>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let Some(limit) = limit else {
        return work.await;
    };
    let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + limit);
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(Error::PlanTimedOut(limit)))
}

/// Waits for Ctrl-C or SIGTERM (what schedulers send to stop a job); returns its name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return "Ctrl-C";
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = terminate.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
