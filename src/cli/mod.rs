//! The command line: argument parsing, environment snapshot, logging set-up, printing and exit
//! codes. The only module that touches the process environment or prints.

mod effective;
mod progress;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::manifest::{self, Env, Format, LoadFailure, Loaded, ManifestInput, Severity};

/// Exit codes.
pub mod exit {
    /// Success (and, with `plan --detailed-exitcode`, no changes).
    pub const OK: u8 = 0;
    /// The user's input is wrong: invalid manifest, blocked or stale plan.
    pub const USER_ERROR: u8 = 1;
    /// `plan --detailed-exitcode`: there are changes.
    pub const CHANGES: u8 = 2;
    /// Something failed at run time: a source, BigQuery, or a table during apply.
    pub const FAILURE: u8 = 3;
}

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
    if let Err(message) = load_env_file(cli.global.env_file.as_deref()) {
        eprintln!("error: {message}");
        return ExitCode::from(exit::USER_ERROR);
    }
    let env = snapshot_env();
    init_logging(&cli.global, &env);
    let code = match run(&cli, &env) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            exit::FAILURE
        }
    };
    ExitCode::from(code)
}

fn load_env_file(path: Option<&Path>) -> Result<(), String> {
    match path {
        Some(path) => dotenvy::from_path(path)
            .map_err(|error| format!("cannot read env file `{}`: {error}", path.display())),
        None => match dotenvy::dotenv() {
            Ok(_) => Ok(()),
            Err(error) if error.not_found() => Ok(()),
            Err(error) => Err(format!("cannot read `.env`: {error}")),
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

fn run(cli: &Cli, env: &Env) -> Result<u8, String> {
    match &cli.command {
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&manifest::json_schema())
                .map_err(|e| e.to_string())?;
            print_stdout(&format!("{schema}\n"));
            Ok(exit::OK)
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

fn manifest_input(global: &GlobalArgs, env: &Env) -> Result<ManifestInput, String> {
    match locate_manifest(global) {
        ManifestLocation::File(path) => {
            let format = Format::from_path(&path).ok_or_else(|| {
                format!(
                    "cannot tell the format of `{}`: use a .yaml, .yml or .toml file",
                    path.display()
                )
            })?;
            let text = std::fs::read_to_string(&path)
                .map_err(|error| format!("cannot read manifest `{}`: {error}", path.display()))?;
            Ok(ManifestInput {
                name: Some(path.display().to_string()),
                text: Some((text, format)),
                env: env.clone(),
            })
        }
        ManifestLocation::Env => {
            if manifest::env::get(env, manifest::env::vars::SYNC_DATABASES).is_none() {
                return Err(
                    "no manifest: pass `-c sync.yaml`, create `sync.yaml` here, or set SYNC_DATABASES (legacy env-only mode)"
                        .into(),
                );
            }
            Ok(ManifestInput {
                name: None,
                text: None,
                env: env.clone(),
            })
        }
    }
}

/// Loads the manifest, printing diagnostics. `Err` carries the exit code.
fn load_manifest(global: &GlobalArgs, env: &Env) -> Result<Loaded, u8> {
    let input = match manifest_input(global, env) {
        Ok(input) => input,
        Err(message) => {
            eprintln!("error: {message}");
            return Err(exit::USER_ERROR);
        }
    };
    match manifest::load(&input) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                let text = manifest::diagnostics::render(
                    &loaded.warnings,
                    loaded.source.as_ref(),
                    color(global, env),
                    diagnostic_width(env),
                );
                print_stderr(&text);
            }
            if loaded.mode == manifest::EnvMode::Legacy {
                tracing::warn!(
                    "using the legacy env-only mode; run `datasync env-to-manifest > sync.yaml` to switch to a manifest"
                );
            }
            Ok(loaded)
        }
        Err(LoadFailure { problems, source }) => {
            let text = manifest::diagnostics::render(
                &problems,
                source.as_ref(),
                color(global, env),
                diagnostic_width(env),
            );
            print_stderr(&text);
            Err(exit::USER_ERROR)
        }
    }
}

fn validate(cli: &Cli, env: &Env, args: &ValidateArgs) -> Result<u8, String> {
    if args.format == DataFormat::Json {
        return validate_json(cli, env, args);
    }
    let loaded = match load_manifest(&cli.global, env) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    if args.show_effective {
        print_stdout(&effective::render_text(&effective::effective_values(
            &loaded,
        )));
    }
    let enabled = loaded
        .manifest
        .tables
        .iter()
        .filter(|table| table.enabled)
        .count();
    let mode = match loaded.mode {
        manifest::EnvMode::Legacy => "legacy environment",
        manifest::EnvMode::Overlay => "manifest",
    };
    let warnings = loaded
        .warnings
        .iter()
        .filter(|problem| problem.severity == Severity::Warning)
        .count();
    eprintln!(
        "valid {mode}: {} source(s), {enabled} table(s) enabled of {}{}",
        loaded.manifest.sources.len(),
        loaded.manifest.tables.len(),
        if warnings > 0 {
            format!(", {warnings} warning(s)")
        } else {
            String::new()
        }
    );
    if args.deny_warnings && warnings > 0 {
        return Ok(exit::USER_ERROR);
    }
    Ok(exit::OK)
}

/// `validate --format json`: one JSON document on stdout with every problem located by line
/// and column (and the effective values with `--show-effective`); diagnostics still go to
/// stderr for humans.
fn validate_json(cli: &Cli, env: &Env, args: &ValidateArgs) -> Result<u8, String> {
    let input = match manifest_input(&cli.global, env) {
        Ok(input) => input,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(exit::USER_ERROR);
        }
    };
    let (problems, source, loaded) = match manifest::load(&input) {
        Ok(mut loaded) => (
            std::mem::take(&mut loaded.warnings),
            loaded.source.clone(),
            Some(loaded),
        ),
        Err(LoadFailure { problems, source }) => (problems, source, None),
    };
    if !problems.is_empty() {
        print_stderr(&manifest::diagnostics::render(
            &problems,
            source.as_ref(),
            color(&cli.global, env),
            diagnostic_width(env),
        ));
    }
    let warnings = problems
        .iter()
        .filter(|problem| problem.severity == Severity::Warning)
        .count();
    let mut document = serde_json::json!({
        "valid": loaded.is_some(),
        "mode": if input.text.is_some() { "manifest" } else { "legacy environment" },
        "problems": manifest::diagnostics::to_json(&problems, source.as_ref()),
    });
    if let Some(loaded) = &loaded {
        document["sources"] = loaded.manifest.sources.len().into();
        document["tables"] = loaded.manifest.tables.len().into();
        if args.show_effective {
            document["effective"] = serde_json::to_value(effective::effective_values(loaded))
                .map_err(|e| e.to_string())?;
        }
    }
    print_stdout(&format!(
        "{}\n",
        serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?
    ));
    Ok(match loaded {
        None => exit::USER_ERROR,
        Some(_) if args.deny_warnings && warnings > 0 => exit::USER_ERROR,
        Some(_) => exit::OK,
    })
}

fn env_to_manifest(cli: &Cli, env: &Env, args: &EnvToManifestArgs) -> Result<u8, String> {
    if manifest::env::get(env, manifest::env::vars::SYNC_DATABASES).is_none() {
        eprintln!("error: SYNC_DATABASES is not set: there is no legacy configuration to convert");
        return Ok(exit::USER_ERROR);
    }
    let input = ManifestInput {
        name: None,
        text: None,
        env: env.clone(),
    };
    let loaded = match manifest::load(&input) {
        Ok(loaded) => loaded,
        Err(LoadFailure { problems, source }) => {
            let text = manifest::diagnostics::render(
                &problems,
                source.as_ref(),
                color(&cli.global, env),
                diagnostic_width(env),
            );
            print_stderr(&text);
            return Ok(exit::USER_ERROR);
        }
    };
    let text = effective::manifest_from_env(&loaded, args.format == ManifestFormat::Toml)?;
    print_stdout(&text);
    Ok(exit::OK)
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

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
}

/// Keeps only the tables named with `--table`; an unknown name is an error listing the known
/// ones.
fn select_tables(
    manifest: &mut crate::manifest::Manifest,
    selected: &[String],
) -> Result<(), String> {
    if selected.is_empty() {
        return Ok(());
    }
    let labels: Vec<String> = manifest
        .tables
        .iter()
        .map(crate::manifest::TableSpec::label)
        .collect();
    let unknown: Vec<&String> = selected
        .iter()
        .filter(|name| !labels.contains(name))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown table(s) {}; the manifest has: {}",
            unknown
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", "),
            labels.join(", ")
        ));
    }
    for table in &mut manifest.tables {
        if !selected.contains(&table.label()) {
            table.enabled = false;
        }
    }
    Ok(())
}

async fn plan(cli: &Cli, env: &Env, args: &PlanArgs) -> Result<u8, String> {
    let mut loaded = match load_manifest(&cli.global, env) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    if let Err(message) = select_tables(&mut loaded.manifest, &args.tables) {
        eprintln!("error: {message}");
        return Ok(exit::USER_ERROR);
    }
    let (session, plan) = within(loaded.manifest.timeout, None, async {
        let session = crate::sync::connect(&loaded.manifest).await?;
        let plan = crate::sync::planner::plan(&loaded.manifest, &session).await?;
        Ok((session, plan))
    })
    .await?;
    drop(session);
    let text = match args.format {
        PlanFormat::Text => crate::plan::render::text(&plan),
        PlanFormat::Markdown => crate::plan::render::markdown(&plan),
        PlanFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?
        ),
    };
    print_stdout(&text);
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?;
        std::fs::write(path, json)
            .map_err(|error| format!("cannot write `{}`: {error}", path.display()))?;
        eprintln!(
            "saved the plan to `{}`; run `datasync apply {}`",
            path.display(),
            path.display()
        );
    }
    if plan.has_errors() {
        return Ok(exit::USER_ERROR);
    }
    Ok(if args.detailed_exitcode && plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

async fn apply(cli: &Cli, env: &Env, args: &ApplyArgs) -> Result<u8, String> {
    let mut loaded = match load_manifest(&cli.global, env) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    if let Err(message) = select_tables(&mut loaded.manifest, &args.tables) {
        eprintln!("error: {message}");
        return Ok(exit::USER_ERROR);
    }
    let dry_run_env = match manifest::env::get(env, manifest::env::vars::DRY_RUN) {
        Some(value) => {
            manifest::env::parse_bool(value).map_err(|message| format!("DRY_RUN: {message}"))?
        }
        None => false,
    };
    let dry_run = if args.dry_run || dry_run_env {
        crate::sync::DryRun::Yes
    } else {
        crate::sync::DryRun::No
    };
    // The manifest's `timeout` covers connecting and planning too, not only the executor.
    let deadline = loaded
        .manifest
        .timeout
        .map(|limit| tokio::time::Instant::now() + limit);
    let (session, fresh) = within(loaded.manifest.timeout, deadline, async {
        let session = crate::sync::connect(&loaded.manifest).await?;
        let fresh = crate::sync::planner::plan(&loaded.manifest, &session).await?;
        Ok((session, fresh))
    })
    .await?;
    let plan = match &args.plan {
        None => fresh,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read plan `{}`: {error}", path.display()))?;
            let checked = crate::plan::stale::read_saved(&text)
                .and_then(|saved| crate::plan::stale::check_fresh(&saved, &fresh).map(|()| saved));
            match checked {
                Ok(saved) => saved,
                Err(error) => {
                    eprintln!(
                        "error: cannot apply `{}`: {error}\nrun `datasync plan --out {}` again",
                        path.display(),
                        path.display()
                    );
                    return Ok(exit::USER_ERROR);
                }
            }
        }
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
                (Some(limit), Some(deadline)) => tokio::time::timeout_at(deadline, run).await.map_err(|_| format!("timed out after {}", humantime::format_duration(limit))),
                _ => Ok(run.await),
            }
        } => report,
        signal = shutdown_signal() => Err(format!("interrupted by {signal}")),
    };
    if let Some(bars) = bars {
        let _ = bars.clear();
    }
    let report = match report {
        Ok(report) => report,
        Err(reason) => {
            executor.abort(&plan).await;
            eprintln!(
                "error: apply {reason}; each target table holds either its previous content or, if its write had completed, the new one — never a partial load"
            );
            return Ok(exit::FAILURE);
        }
    };
    match args.format {
        DataFormat::Text => print_stdout(&report.text()),
        DataFormat::Json => print_stdout(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        )),
    }
    Ok(if report.succeeded() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// Runs `work` (connecting, planning) by `deadline` (default: `limit` from now), if any.
async fn within<T>(
    limit: Option<std::time::Duration>,
    deadline: Option<tokio::time::Instant>,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let Some(limit) = limit else {
        return work.await;
    };
    let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + limit);
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timed out after {} (manifest `timeout`) while connecting and planning",
                humantime::format_duration(limit)
            ))
        })
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
