//! Saved plans: reading one back, and checking it still describes the world. Pure.

use super::{FORMAT_VERSION, Plan, datasync_version};

/// Why a saved plan cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedPlanError {
    /// Not a datasync plan at all.
    #[error("it is not a datasync plan: {0}")]
    NotAPlan(String),
    /// Written by another datasync version or plan format.
    #[error(
        "it was saved by datasync {saved_version} (plan format {saved_format}); this is datasync {} (plan format {FORMAT_VERSION}), which applies only its own plans",
        datasync_version()
    )]
    OtherVersion {
        /// The saving datasync's version.
        saved_version: String,
        /// The saved plan's format.
        saved_format: u64,
    },
    /// The fingerprint does not match the content.
    #[error("it was edited after `datasync plan --out` wrote it")]
    Edited,
    /// The sources, the targets or the manifest changed since.
    #[error("it is stale:\n{}", .0.iter().map(|line| format!("  - {line}")).collect::<Vec<_>>().join("\n"))]
    Stale(Vec<String>),
}

/// Reads a saved plan, refusing one written by another datasync version or format (checked
/// before the rest is parsed, so the message names both versions even when the formats differ)
/// or edited since.
pub fn read_saved(text: &str) -> Result<Plan, SavedPlanError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| SavedPlanError::NotAPlan(error.to_string()))?;
    let saved_format = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64);
    let saved_version = value
        .get("datasync_version")
        .and_then(serde_json::Value::as_str);
    let (Some(saved_format), Some(saved_version)) = (saved_format, saved_version) else {
        return Err(SavedPlanError::NotAPlan(
            "it has no `format_version` and `datasync_version`".into(),
        ));
    };
    if saved_format != u64::from(FORMAT_VERSION) || saved_version != datasync_version() {
        return Err(SavedPlanError::OtherVersion {
            saved_version: saved_version.to_string(),
            saved_format,
        });
    }
    let plan: Plan = serde_json::from_value(value)
        .map_err(|error| SavedPlanError::NotAPlan(error.to_string()))?;
    if !plan.is_intact() {
        return Err(SavedPlanError::Edited);
    }
    Ok(plan)
}

/// Checks a saved plan against a fresh one of the same manifest.
pub fn check_fresh(saved: &Plan, fresh: &Plan) -> Result<(), SavedPlanError> {
    let stale = stale_tables(saved, fresh);
    if stale.is_empty() {
        Ok(())
    } else {
        Err(SavedPlanError::Stale(stale))
    }
}

/// Differences between a saved plan and the world now, if any.
pub fn stale_tables(saved: &Plan, fresh: &Plan) -> Vec<String> {
    let mut stale = Vec::new();
    if saved.destination != fresh.destination {
        stale.push(format!(
            "the destination changed from bq://{} to bq://{}",
            saved.destination, fresh.destination
        ));
    }
    if saved.create_dataset && !fresh.create_dataset {
        stale.push(format!("the dataset `{}` exists now", fresh.destination));
    }
    for table in &saved.tables {
        match fresh
            .tables
            .iter()
            .find(|candidate| candidate.label == table.label)
        {
            None => stale.push(format!("{}: no longer in the manifest", table.label)),
            Some(now) => {
                if now.spec != table.spec {
                    stale.push(format!("{}: its manifest entry changed", table.label));
                }
                if now.source_fingerprint != table.source_fingerprint {
                    stale.push(format!("{}: the source table changed", table.label));
                }
                if now.target_fingerprint != table.target_fingerprint {
                    stale.push(format!(
                        "{}: the BigQuery table `{}` changed",
                        table.label, table.target
                    ));
                }
            }
        }
    }
    for table in &fresh.tables {
        if !saved
            .tables
            .iter()
            .any(|candidate| candidate.label == table.label)
        {
            stale.push(format!("{}: new in the manifest", table.label));
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_plan() -> Plan {
        Plan::new("p.ds".into(), false, Vec::new())
    }

    #[test]
    fn a_plan_round_trips() {
        let plan = empty_plan();
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(read_saved(&text).unwrap(), plan);
    }

    #[test]
    fn another_version_is_refused_naming_both_versions() {
        let mut value = serde_json::to_value(empty_plan()).unwrap();
        value["datasync_version"] = "0.0.9".into();
        let error = read_saved(&value.to_string()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("datasync 0.0.9 (plan format 3)"),
            "{message}"
        );
        assert!(
            message.contains(&format!("this is datasync {}", datasync_version())),
            "{message}"
        );
    }

    #[test]
    fn another_format_is_refused_before_parsing_the_rest() {
        let text = format!(
            r#"{{"format_version": 1, "datasync_version": "{}", "tables": [{{"mode": "x"}}]}}"#,
            datasync_version()
        );
        assert_eq!(
            read_saved(&text).unwrap_err(),
            SavedPlanError::OtherVersion {
                saved_version: datasync_version().to_string(),
                saved_format: 1
            }
        );
    }

    #[test]
    fn an_edited_plan_is_refused() {
        let mut value = serde_json::to_value(empty_plan()).unwrap();
        value["destination"] = "other.ds".into();
        assert_eq!(
            read_saved(&value.to_string()).unwrap_err(),
            SavedPlanError::Edited
        );
    }

    #[test]
    fn garbage_is_not_a_plan() {
        assert!(matches!(
            read_saved("{}").unwrap_err(),
            SavedPlanError::NotAPlan(_)
        ));
        assert!(matches!(
            read_saved("not json").unwrap_err(),
            SavedPlanError::NotAPlan(_)
        ));
    }
}
