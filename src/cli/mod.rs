//! The command line: argument parsing, environment snapshot, logging set-up, printing and exit
//! codes. The only module that touches the process environment or prints.

mod docs;
mod effective;
mod init;
mod legacy;
mod logging;
mod progress;
mod runs;
mod terraform;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::diagnostic::{Diagnostic, Severity};
use crate::error::{Error, ExitStatus, SavedPlanError};
use crate::manifest::{self, Env, Format, Loaded, ManifestInput, SourceText};

/// Sync MySQL/MariaDB, PostgreSQL and SQLite tables into BigQuery, Terraform-style.
#[derive(Debug, Parser)]
#[command(name = "datasync", version = logging::long_version(), about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "\
Examples:
  datasync init --source postgres://me@localhost/shop > sync.yaml
  datasync validate
  datasync plan -out plan.json
  datasync apply plan.json
  datasync apply --table 'shop.order_*' --auto-approve
  datasync runs --limit 5

Without a command and with the legacy variables set (SYNC_DATABASES, no manifest file), datasync
runs `apply`, as the Go tool did.";

/// Options for every command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// Manifest file (YAML or TOML, by extension). Default: `sync.yaml`, `sync.yml` or
    /// `sync.toml` in the current directory; without one, the legacy env-only mode
    /// (SYNC_DATABASES, …).
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Read variables from this file (it never overrides variables already set); `none` reads
    /// no file. Default: `.env` in the current directory, if present.
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. Default: LOG_LEVEL, else `info`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Only errors: no progress, no warnings (same as `--log-level error`).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More logs: `-v` info, `-vv` debug, `-vvv` trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
    /// List recent runs from the dataset's run ledger (`_datasync_runs`), or one run's tables.
    Runs(runs::RunsArgs),
    /// Print the manifest's JSON Schema.
    Schema,
    /// Print the manifest equivalent to the legacy environment variables.
    EnvToManifest(EnvToManifestArgs),
    /// Write a commented manifest for an existing database: its tables, a mode proposed for each.
    #[command(
        after_help = "Examples:\n  datasync init --source postgres://me@localhost/shop > sync.yaml\n  datasync init --source sqlite://app.db --dataset analytics > sync.yaml"
    )]
    Init(init::InitArgs),
    /// Print a shell completion script (`source <(datasync completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (`datasync man > datasync.1`).
    Man,
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

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
enum DataFormat {
    #[default]
    Text,
    Json,
}

/// What `plan` and `apply` share.
#[derive(Debug, Args, Default)]
struct RunArgs {
    /// Only these tables (`source.table` as in the plan, or a pattern: `shop.*`, `*.order_*`;
    /// repeatable).
    #[arg(long = "table", value_name = "SOURCE.TABLE")]
    tables: Vec<String>,
    /// How many tables run at once (default: the manifest's `defaults.parallelism`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallelism: Option<u32>,
    /// How long `apply` waits for another run's lease on a target table (e.g. `30s`, `5m`;
    /// default `0`: fail that table at once, naming the run that holds it). Also `-lock-timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    lock_timeout: Option<std::time::Duration>,
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
#[command(
    after_help = "Examples:\n  datasync plan\n  datasync plan -out plan.json --format markdown > plan.md\n  datasync plan --table 'shop.*' --detailed-exitcode"
)]
struct PlanArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// Save the plan (JSON, fingerprinted) for `datasync apply FILE`. Also `-out FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Exit 0 when no schema changes, 2 when there are changes, 1 on errors.
    #[arg(long)]
    detailed_exitcode: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Args, Default)]
#[command(
    after_help = "Examples:\n  datasync apply                  # plans, shows the plan, asks for `yes` on a terminal\n  datasync apply plan.json        # exactly the saved plan, no question\n  datasync apply --auto-approve --parallelism 8"
)]
struct ApplyArgs {
    /// A plan saved by `plan --out`; apply refuses it if the sources or targets changed since.
    plan: Option<PathBuf>,
    /// Extract and encode every row without writing to BigQuery. Also DRY_RUN=true.
    #[arg(long)]
    dry_run: bool,
    /// Format of the final report on stdout.
    #[arg(long, value_enum, default_value_t = DataFormat::Text)]
    format: DataFormat,
    /// Apply a fresh plan without asking for `yes` (a saved plan or a stdin that is not a
    /// terminal never asks).
    #[arg(long)]
    auto_approve: bool,
    #[command(flatten)]
    run: RunArgs,
    /// How long a target's lease lasts unless renewed (renewed every third of it while the table
    /// runs); a killed run's lease is taken over once it has expired, or at once when its
    /// holder was a process of this host that no longer runs.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    lease_duration: std::time::Duration,
    /// How long this run's staging tables live (their BigQuery `expirationTime`); a later run
    /// drops a dead run's staging and backup tables older than this.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    staging_expiration: std::time::Duration,
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
    let cli = match Cli::try_parse_from(terraform::normalize(std::env::args_os())) {
        Ok(cli) => cli,
        Err(error) => return legacy::usage_error(&error).into(),
    };
    let mut env = snapshot_env();
    let status = match load_env_file(cli.global.env_file.as_deref()) {
        Err(error) => {
            init_logging(&cli.global, &env);
            report(&cli.global, &env, &error)
        }
        Ok(pairs) => {
            // The env file never overrides variables already set.
            let mut from_file = Vec::new();
            for (key, value) in pairs {
                if let std::collections::btree_map::Entry::Vacant(entry) = env.entry(key) {
                    from_file.push(entry.key().clone());
                    entry.insert(value);
                }
            }
            init_logging(&cli.global, &env);
            let context = Context {
                cli: &cli,
                env: &env,
                from_file,
            };
            match run(&context) {
                Ok(status) => status,
                Err(error) => report(&cli.global, &env, &error),
            }
        }
    };
    status.into()
}

/// What every command gets: the arguments, the environment snapshot, and the names of the
/// variables that came from the env file (not the process environment).
struct Context<'a> {
    cli: &'a Cli,
    env: &'a Env,
    from_file: Vec<String>,
}

/// Prints `error` (a manifest failure as located diagnostics) and returns its exit status.
fn report(global: &GlobalArgs, env: &Env, error: &Error) -> ExitStatus {
    let status = error.exit_status();
    match error {
        Error::Manifest(failure) => {
            print_problems(global, env, &failure.problems, failure.source.as_ref());
        }
        other if logging::json_mode() => {
            let mut fields = serde_json::Map::new();
            fields.insert("exit_code".into(), status.code().into());
            logging::line("error", &other.to_string(), fields);
        }
        other => eprintln!("error: {other}"),
    }
    status
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
    if logging::json_mode() {
        let serde_json::Value::Array(items) = manifest::diagnostics::to_json(problems, source)
        else {
            return;
        };
        for item in items {
            let mut fields = logging::fields(item);
            let level = fields
                .remove("severity")
                .and_then(|value| value.as_str().map(str::to_string))
                .map_or("error", |severity| {
                    if severity == "warning" {
                        "warn"
                    } else {
                        "error"
                    }
                });
            let msg = fields
                .remove("message")
                .and_then(|value| value.as_str().map(str::to_string))
                .unwrap_or_default();
            logging::line(level, &msg, fields);
        }
        return;
    }
    print_stderr(&manifest::diagnostics::render(
        problems,
        source,
        color(global, env),
        diagnostic_width(env),
    ));
}

/// Reads the env file's variables (`none`: no file; default: `.env` if present).
fn load_env_file(path: Option<&Path>) -> Result<Vec<(String, String)>, Error> {
    let (path, explicit) = match path {
        Some(path) if path == Path::new("none") => return Ok(Vec::new()),
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from(".env"), false),
    };
    if !explicit && !path.is_file() {
        return Ok(Vec::new());
    }
    let shown = path.display().to_string();
    let items = dotenvy::from_path_iter(&path)
        .map_err(|error| Error::Usage(format!("cannot read env file `{shown}`: {error}")))?;
    let mut pairs = Vec::new();
    for item in items {
        let (key, value) =
            item.map_err(|error| Error::Usage(format!("cannot read env file `{shown}`: {error}")))?;
        pairs.push((key, value));
    }
    Ok(pairs)
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
    let flags = match (global.quiet, global.verbose) {
        (true, _) => Some("error"),
        (false, 0) => None,
        (false, 1) => Some("info"),
        (false, 2) => Some("debug"),
        (false, _) => Some("trace"),
    };
    let level = global
        .log_level
        .clone()
        .or_else(|| flags.map(str::to_string))
        .or_else(|| manifest::env::get(env, "LOG_LEVEL").map(str::to_string));
    let json = match global.log_format {
        Some(format) => format == LogFormat::Json,
        None => manifest::env::get(env, "LOG_ENV") == Some("prod"),
    };
    if let Some(problem) = logging::init(level.as_deref(), json, color(global, env)) {
        tracing::warn!("{problem}");
    }
}

fn color(global: &GlobalArgs, env: &Env) -> bool {
    match global.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        // https://no-color.org: set and not empty.
        ColorChoice::Auto => {
            env.get("NO_COLOR").is_none_or(String::is_empty) && std::io::stderr().is_terminal()
        }
    }
}

fn diagnostic_width(env: &Env) -> usize {
    env.get("COLUMNS")
        .and_then(|columns| columns.parse().ok())
        .unwrap_or(100)
}

fn run(context: &Context<'_>) -> Result<ExitStatus, Error> {
    let (cli, env) = (context.cli, context.env);
    let Some(command) = &cli.command else {
        return legacy::bare(context);
    };
    match command {
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&manifest::json_schema())?;
            print_stdout(&format!("{schema}\n"));
            Ok(ExitStatus::Success)
        }
        Command::Validate(args) => validate(cli, env, args, &context.from_file),
        Command::EnvToManifest(args) => env_to_manifest(cli, env, args),
        Command::Plan(args) => runtime()?.block_on(plan(context, args)),
        Command::Apply(args) => runtime()?.block_on(apply(context, args)),
        Command::Runs(args) => runtime()?.block_on(runs::run(context, args)),
        Command::Init(args) => runtime()?.block_on(init::run(args)),
        Command::Completions { shell } => {
            let script = docs::completions(*shell);
            print_stdout(&String::from_utf8_lossy(&script));
            Ok(ExitStatus::Success)
        }
        Command::Man => {
            let page = docs::man_page()
                .map_err(|error| Error::Internal(format!("cannot render the man page: {error}")))?;
            print_stdout(&String::from_utf8_lossy(&page));
            Ok(ExitStatus::Success)
        }
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
            let text = read_manifest(&path)?;
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

/// Reads a manifest file: not a directory, at most [`manifest::MAX_MANIFEST_BYTES`], UTF-8.
fn read_manifest(path: &Path) -> Result<String, Error> {
    let unreadable = |source| Error::ManifestUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    if metadata.is_dir() {
        return Err(Error::Usage(format!(
            "`{}` is a directory, not a manifest file",
            path.display()
        )));
    }
    if metadata.len() > manifest::MAX_MANIFEST_BYTES as u64 {
        return Err(Error::Usage(format!(
            "manifest `{}` is {} bytes; the limit is {} bytes (1 MiB)",
            path.display(),
            metadata.len(),
            manifest::MAX_MANIFEST_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    String::from_utf8(bytes).map_err(|error| {
        Error::Usage(format!(
            "manifest `{}` is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            error.utf8_error().valid_up_to()
        ))
    })
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
    // Info, not warn: an alert on warnings must not fire on every legacy run.
    if loaded.mode == manifest::EnvMode::Legacy {
        tracing::info!(
            "using the legacy env-only mode; run `datasync env-to-manifest > sync.yaml` to switch to a manifest"
        );
    }
}

/// `validate`: every problem on stderr for humans; with `--format json` also one JSON document
/// on stdout with every problem located by line, column and code (and the effective values
/// with `--show-effective`).
fn validate(
    cli: &Cli,
    env: &Env,
    args: &ValidateArgs,
    from_file: &[String],
) -> Result<ExitStatus, Error> {
    let input = match manifest_input(&cli.global, env) {
        Ok(input) => input,
        // `--format json` answers in JSON whatever fails, even before there is a manifest.
        Err(error) if args.format == DataFormat::Json => {
            let document = serde_json::json!({
                "valid": false,
                "mode": null,
                "problems": [{
                    "severity": "error",
                    "code": "datasync::usage",
                    "message": error.to_string(),
                    "help": null,
                    "pointer": null,
                    "env_var": null,
                    "file": cli.global.config.as_ref().map(|path| path.display().to_string()),
                    "line": null,
                    "column": null,
                }],
            });
            print_stdout(&format!("{}\n", serde_json::to_string_pretty(&document)?));
            return Ok(error.exit_status());
        }
        Err(error) => return Err(error),
    };
    let outcome = manifest::load(&input);
    if let (Ok(loaded), DataFormat::Text) = (&outcome, args.format) {
        // What the environment overrides is listed as in `plan` and `apply`.
        effective::print_overrides(loaded, from_file);
    }
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
                let summary = validate_summary(mode, loaded, warnings);
                if logging::json_mode() {
                    logging::line("info", &summary, serde_json::Map::new());
                } else {
                    eprintln!("{summary}");
                }
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

/// Keeps only the tables named (or matched by a pattern) with `--table`; one that selects
/// nothing is an error with a "did you mean" and the known tables.
fn select_tables(
    manifest: &mut crate::manifest::Manifest,
    selected: &[String],
) -> Result<(), Error> {
    use crate::sync::patterns;
    if selected.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = manifest
        .tables
        .iter()
        .map(crate::manifest::TableSpec::label)
        .collect();
    let unknown: Vec<(String, Option<String>)> = patterns::unmatched(selected, &known)
        .into_iter()
        .map(|name| {
            let close = patterns::did_you_mean(name, &known).map(str::to_string);
            (name.clone(), close)
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Error::UnknownTables { unknown, known });
    }
    for table in &mut manifest.tables {
        if !patterns::selected(&table.label(), selected) {
            table.enabled = false;
        }
    }
    Ok(())
}

/// What `plan` and `apply` share: the manifest with `--table` applied, connected and planned
/// within the manifest's `timeout` (which covers connecting and planning, not only the executor);
/// the deadline is returned for the rest of the run. A signal while connecting or planning stops
/// the run and says so.
async fn prepare(
    context: &Context<'_>,
    run: &RunArgs,
    dry_run: bool,
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
    let mut loaded = load_manifest(&context.cli.global, context.env)?;
    effective::print_overrides(&loaded, &context.from_file);
    if loaded.manifest.patterns.is_empty() {
        select_tables(&mut loaded.manifest, &run.tables)?;
    }
    if let Some(parallelism) = run.parallelism {
        loaded.manifest.parallelism = parallelism;
    }
    if let Some(wait) = run.lock_timeout {
        tracing::debug!(lock_timeout = ?wait, "lock timeout");
    }
    if let Some(shard) = shard {
        // Other shards' tables are disabled before connecting: not introspected, not planned,
        // but still the manifest's (their targets are not orphans).
        disable_other_shards(&mut loaded.manifest, shard);
    }
    let limit = loaded.manifest.timeout;
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let manifest = &mut loaded.manifest;
    let work = within(limit, deadline, async {
        let planned = match crate::sync::connect(manifest).await {
            Ok(session) => plan_session(manifest, session, &run.tables, shard).await,
            Err(error) => Err(error),
        };
        match planned {
            Err(error @ (Error::Planning { .. } | Error::Warehouse(_))) if dry_run => {
                offline_dry_run_plan(manifest, &error, shard).await
            }
            other => other,
        }
    });
    let (session, plan) = tokio::select! {
        result = work => result?,
        signal = shutdown_signal() => return Err(Error::Usage(format!(
            "interrupted by {signal} while connecting to the sources and BigQuery and planning; nothing was written"
        ))),
    };
    Ok((loaded, session, plan, deadline))
}

/// Disables the tables `shard` does not own.
fn disable_other_shards(
    manifest: &mut crate::manifest::Manifest,
    shard: crate::plan::shard::Shard,
) {
    for table in &mut manifest.tables {
        if !shard.owns(&table.label()) {
            table.enabled = false;
        }
    }
}

/// Expands table patterns against the sources' catalogs (then applies `--table`) and plans.
async fn plan_session(
    manifest: &mut crate::manifest::Manifest,
    session: crate::sync::Session,
    tables: &[String],
    shard: Option<crate::plan::shard::Shard>,
) -> Result<(crate::sync::Session, crate::plan::Plan), Error> {
    if !manifest.patterns.is_empty() {
        crate::sync::expand_patterns(manifest, &session).await?;
        select_tables(manifest, tables)?;
        if let Some(shard) = shard {
            disable_other_shards(manifest, shard);
        }
    }
    let plan = crate::sync::planner::plan(manifest, &session).await?;
    Ok((session, plan))
}

/// A dry run needs no BigQuery (as the Go tool's, which only exercised extraction): when
/// BigQuery is unreachable or has no credentials, plan against unknown targets — every table
/// as if new, so every row is extracted and encoded — and say so.
async fn offline_dry_run_plan(
    manifest: &mut crate::manifest::Manifest,
    error: &Error,
    shard: Option<crate::plan::shard::Shard>,
) -> Result<(crate::sync::Session, crate::plan::Plan), Error> {
    let message = format!(
        "BigQuery is not available ({error}); the dry run plans against unknown targets: every table as if new, every row extracted and encoded"
    );
    if logging::json_mode() {
        logging::line("warn", &message, serde_json::Map::new());
    } else {
        eprintln!("warning: {message}\n");
    }
    let warehouse = std::sync::Arc::new(crate::warehouse::FakeWarehouse::with_dataset());
    let session = crate::sync::connect_sources(manifest, warehouse).await;
    plan_session(manifest, session, &[], shard).await
}

async fn plan(context: &Context<'_>, args: &PlanArgs) -> Result<ExitStatus, Error> {
    legacy::start_line("plan");
    let shard = shard(context.env, args.run.shard.as_deref(), args.run.shard_count)?;
    let (_loaded, _session, plan, _deadline) = prepare(context, &args.run, false, shard).await?;
    if logging::json_mode() && args.format == PlanFormat::Text {
        legacy::plan_lines(&plan, true);
    } else {
        let text = match args.format {
            PlanFormat::Text => crate::plan::render::text(&plan),
            PlanFormat::Markdown => crate::plan::render::markdown(&plan),
            PlanFormat::Json => format!("{}\n", serde_json::to_string_pretty(&plan)?),
        };
        print_stdout(&text);
    }
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&plan)?;
        std::fs::write(path, json).map_err(|source| Error::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        let message = format!(
            "saved the plan to `{}`; run `datasync apply {}`",
            path.display(),
            path.display()
        );
        if logging::json_mode() {
            logging::line("info", &message, serde_json::Map::new());
        } else {
            eprintln!("{message}");
        }
    }
    Ok(if plan.has_errors() {
        ExitStatus::UserError
    } else if args.detailed_exitcode && plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    })
}

/// This run's shard (`--shard`, `--shard-count`, the job environment), if any.
fn shard(
    env: &Env,
    flag: Option<&str>,
    count: Option<u64>,
) -> Result<Option<crate::plan::shard::Shard>, Error> {
    crate::plan::shard::Shard::resolve(flag, count, env)
        .map_err(|reason| Error::Usage(format!("invalid shard: {reason}")))
}

/// Reads a plan saved by `plan --out` (before connecting to anything: a missing file is a
/// user error, reported at once), keeping only this shard's tables.
fn read_saved_plan(
    path: &Path,
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
        .map_err(|reason| {
            SavedPlanError::Rejected {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        })
}

/// Checks a saved plan still matches `fresh`.
fn check_saved_plan(
    path: &Path,
    saved: crate::plan::Plan,
    fresh: &crate::plan::Plan,
) -> Result<crate::plan::Plan, Error> {
    crate::plan::stale::check_fresh(&saved, fresh)
        .map(|()| saved)
        .map_err(|reason| {
            SavedPlanError::Rejected {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        })
}

async fn apply(context: &Context<'_>, args: &ApplyArgs) -> Result<ExitStatus, Error> {
    if args.plan.is_some() && !args.run.tables.is_empty() {
        return Err(Error::Usage(
            "`--table` cannot narrow a saved plan: plan with `--table` instead".into(),
        ));
    }
    legacy::start_line("apply");
    let shard = shard(context.env, args.run.shard.as_deref(), args.run.shard_count)?;
    let saved = args
        .plan
        .as_deref()
        .map(|path| read_saved_plan(path, shard))
        .transpose()?;
    // An invalid DRY_RUN fails the manifest load.
    let dry_run_env = manifest::env::get(context.env, manifest::env::vars::DRY_RUN)
        .is_some_and(|value| manifest::env::parse_bool(value) == Ok(true));
    let (loaded, session, fresh, deadline) =
        prepare(context, &args.run, args.dry_run || dry_run_env, shard).await?;
    let dry_run = if args.dry_run || dry_run_env {
        crate::sync::DryRun::Yes
    } else {
        crate::sync::DryRun::No
    };
    let plan = match (&args.plan, saved) {
        (Some(path), Some(saved)) => check_saved_plan(path, saved, &fresh)?,
        _ => fresh,
    };
    if logging::json_mode() {
        legacy::plan_lines(&plan, false);
    } else {
        print_stderr(&crate::plan::render::text(&plan));
    }
    let fresh_plan = args.plan.is_none();
    if fresh_plan
        && !args.auto_approve
        && dry_run == crate::sync::DryRun::No
        && plan.tables.iter().any(|table| table.action.runs())
        && terraform::should_ask()
        && !terraform::confirm()
    {
        eprintln!("\nApply cancelled.");
        return Ok(ExitStatus::UserError);
    }
    let tables: Vec<(String, Option<u64>)> = plan
        .tables
        .iter()
        .filter(|table| table.action.runs())
        .map(|table| (table.label.clone(), table.estimated_rows))
        .collect();
    let (progress, phases, bars) = progress::progress(&tables, context.cli.global.quiet);
    let run_id = crate::sync::new_run_id();
    let executor = crate::sync::Executor {
        sources: session.sources.clone(),
        warehouse: std::sync::Arc::clone(&session.warehouse),
        parallelism: usize::try_from(loaded.manifest.parallelism).unwrap_or(1),
        dry_run,
        progress,
        phases,
        run_id: run_id.clone(),
        settings: crate::sync::RunSettings {
            lease: crate::sync::lease::LeaseSettings {
                wait: args.run.lock_timeout.unwrap_or(std::time::Duration::ZERO),
                duration: args.lease_duration.max(std::time::Duration::from_secs(1)),
            },
            staging_ttl: args
                .staging_expiration
                .max(std::time::Duration::from_secs(1)),
        },
        // Each shard records its own rows, with its shard.
        ledger: std::sync::Arc::new(crate::sync::RunLedger::new(
            shard.map(|shard| shard.to_string()),
        )),
        jobs: Default::default(),
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
        progress::finished();
    }
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            executor.abort(&plan).await;
            return Err(error);
        }
    };
    match args.format {
        DataFormat::Text if logging::json_mode() => legacy::report_lines(&report, &run_id),
        DataFormat::Text => print_stdout(&report.text()),
        DataFormat::Json => print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
    }
    Ok(apply_status(&report))
}

/// README "Exit codes": 3 when a table failed at run time or the run could not be recorded in
/// the ledger (the targets were written, but 0 would claim more than is true); 1 when the only
/// failures are tables the plan blocked (a user error, as `plan` says); 0 otherwise.
fn apply_status(report: &crate::sync::ApplyReport) -> ExitStatus {
    use crate::sync::TableStatus;
    let any = |status| report.tables.iter().any(|table| table.status == status);
    if any(TableStatus::Failed) || report.ledger_failed() {
        ExitStatus::Failure
    } else if any(TableStatus::Skipped) {
        ExitStatus::UserError
    } else {
        ExitStatus::Success
    }
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
