//! `datasync runs`: the recent runs recorded in the dataset's run ledger (`_datasync_runs`), or
//! one run's tables, as text or JSON. Needs only the manifest's `bigquery` settings.

use clap::Args;

use super::{Context, DataFormat, load_manifest, print_stdout};
use crate::error::{Error, ExitStatus};
use crate::sync::ledger::{RUNS_TABLE, runs};
use crate::warehouse::{BigQuery, Warehouse};

/// What `datasync runs` takes.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  datasync runs                          # the last 20 runs\n  datasync runs --limit 5 --table 'shop.order*'\n  datasync runs --run 1796000000_000001  # that run's tables: status, rows, watermark, jobs\n  datasync runs --format json | jq '.runs[0]'"
)]
pub(super) struct RunsArgs {
    /// How many runs to list, newest first.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    /// Only runs with a table matching this (`source.table` or a pattern such as `shop.*`),
    /// counting only those tables.
    #[arg(long = "table", value_name = "PATTERN")]
    table: Option<String>,
    /// Show this run's tables (the run id `apply` prints and logs).
    #[arg(long = "run", value_name = "RUN_ID")]
    run: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DataFormat::Text)]
    format: DataFormat,
}

/// Lists runs, or one run's rows.
pub(super) async fn run(context: &Context<'_>, args: &RunsArgs) -> Result<ExitStatus, Error> {
    let loaded = load_manifest(&context.cli.global, context.env)?;
    let spec = &loaded.manifest.bigquery;
    let destination = format!("{}.{}", spec.project, spec.dataset);
    let planning = |source| Error::Planning {
        context: format!("run ledger `{destination}.{RUNS_TABLE}`"),
        source: Box::new(source),
    };
    let warehouse = BigQuery::new(spec).map_err(|source| Error::Planning {
        context: "BigQuery".into(),
        source: Box::new(source),
    })?;
    warehouse.ensure_dataset(false).await.map_err(planning)?;
    let json = args.format == DataFormat::Json;
    if warehouse
        .get_table(RUNS_TABLE)
        .await
        .map_err(planning)?
        .is_none()
    {
        if args.run.is_some() {
            return Err(Error::Usage(no_ledger(&destination)));
        }
        print_stdout(&if json {
            let document = serde_json::json!({
                "destination": destination,
                "ledger": format!("{destination}.{RUNS_TABLE}"),
                "exists": false,
                "runs": [],
            });
            format!("{}\n", serde_json::to_string_pretty(&document)?)
        } else {
            format!("{}\n", no_ledger(&destination))
        });
        return Ok(ExitStatus::Success);
    }
    let pattern = args.table.as_deref();
    if let Some(run_id) = &args.run {
        let rows = runs::run_rows(&warehouse, &destination, run_id, pattern)
            .await
            .map_err(planning)?;
        if rows.is_empty() {
            return Err(Error::Usage(format!(
                "run `{run_id}` has no rows{} in `{destination}.{RUNS_TABLE}`; `datasync runs` lists the recorded runs",
                pattern
                    .map(|pattern| format!(" for tables matching `{pattern}`"))
                    .unwrap_or_default()
            )));
        }
        print_stdout(&if json {
            let document = serde_json::json!({
                "destination": destination,
                "run_id": run_id,
                "tables": rows,
            });
            format!("{}\n", serde_json::to_string_pretty(&document)?)
        } else {
            runs::render_run(&destination, run_id, &rows)
        });
        return Ok(ExitStatus::Success);
    }
    let list = runs::list(&warehouse, &destination, args.limit, pattern)
        .await
        .map_err(planning)?;
    print_stdout(&if json {
        let document = serde_json::json!({
            "destination": destination,
            "ledger": format!("{destination}.{RUNS_TABLE}"),
            "exists": true,
            "runs": list,
        });
        format!("{}\n", serde_json::to_string_pretty(&document)?)
    } else {
        runs::render_list(&destination, &list)
    });
    Ok(ExitStatus::Success)
}

fn no_ledger(destination: &str) -> String {
    format!(
        "no runs recorded yet: `{destination}.{RUNS_TABLE}` does not exist (the first `datasync apply` creates it)"
    )
}
