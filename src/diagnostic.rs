//! One diagnostic type for every stage: manifest checks, the env overlay, column mapping and the
//! plan. A [`Diagnostic`] has a stable [`Code`] (`datasync::mapping::lossy_override`), a
//! [`Severity`], a message, an optional hint and a [`Location`] saying what it is about.
//!
//! The message is complete on its own (it names the column or variable when there is one), so
//! [`Display`](fmt::Display) prints only the message; the location is there for machines
//! (`--format json`) and for pointing at the manifest's line and column.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The input cannot be used as it is.
    Error,
    /// Worth fixing; does not stop anything.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// What a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// A node of the manifest document, by JSON pointer (`""` is the top level).
    Manifest {
        /// The JSON pointer.
        pointer: String,
        /// Whether the key (rather than the value) should be underlined.
        on_key: bool,
    },
    /// An environment variable.
    Env(String),
    /// An exact byte range of the manifest text (syntax errors).
    Span(Range<usize>),
    /// A table, by its `source.table` label or its source-side name.
    Table(String),
    /// One column of a table.
    Column {
        /// The table.
        table: String,
        /// The column, as the source spells it.
        column: String,
    },
    /// Nothing more specific.
    None,
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $variant:ident => $text:literal,)*) => {
        /// A stable diagnostic code, e.g. `datasync::manifest::unknown_field`. Scripts may match on
        /// [`Code::as_str`]; the strings never change meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Code {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Code {
            /// Every code.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable string, e.g. `datasync::plan::incompatible`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }
    };
}

codes! {
    /// The manifest is not valid YAML or TOML.
    ManifestSyntax => "datasync::manifest::syntax",
    /// A value does not match the manifest's JSON Schema.
    ManifestSchema => "datasync::manifest::schema",
    /// A key the schema does not know.
    ManifestUnknownField => "datasync::manifest::unknown_field",
    /// A required key is missing.
    ManifestMissingField => "datasync::manifest::missing_field",
    /// An invalid BigQuery project, dataset or table name.
    ManifestBigqueryName => "datasync::manifest::bigquery_name",
    /// A bad `bigquery.endpoint`.
    ManifestEndpoint => "datasync::manifest::endpoint",
    /// `emulator: true` without an endpoint.
    ManifestEmulator => "datasync::manifest::emulator",
    /// Credentials set for the emulator, which takes none.
    ManifestEmulatorCredentials => "datasync::manifest::emulator_credentials",
    /// A bad duration.
    ManifestDuration => "datasync::manifest::duration",
    /// A bad size (`chunk_bytes`).
    ManifestSize => "datasync::manifest::size",
    /// A `${VAR}` reference that cannot be expanded.
    ManifestEnvVar => "datasync::manifest::env_var",
    /// The manifest has no sources.
    ManifestNoSources => "datasync::manifest::no_sources",
    /// A source lists no tables.
    ManifestNoTables => "datasync::manifest::no_tables",
    /// A bad source name.
    ManifestSourceName => "datasync::manifest::source_name",
    /// A bad table key.
    ManifestTableName => "datasync::manifest::table_name",
    /// Two tables write the same target.
    ManifestDuplicateTarget => "datasync::manifest::duplicate_target",
    /// A URL with the wrong scheme.
    ManifestUrl => "datasync::manifest::url",
    /// Connection parts ignored because `url` is set.
    ManifestUrlAndParts => "datasync::manifest::url_and_parts",
    /// `schema` set on a source that is not PostgreSQL.
    ManifestSchemaIgnored => "datasync::manifest::schema_ignored",
    /// Inconsistent TLS settings.
    ManifestTls => "datasync::manifest::tls",
    /// An `ssh` tunnel setting that is missing, invalid or not for this engine.
    ManifestSsh => "datasync::manifest::ssh",
    /// An empty or repeated column name in a list.
    ManifestColumn => "datasync::manifest::column",
    /// A column named by an option but not selected.
    ManifestUnknownColumn => "datasync::manifest::unknown_column",
    /// A `column_types` override that is not a BigQuery column type.
    ManifestColumnType => "datasync::manifest::column_type",
    /// An empty `primary_key`.
    ManifestPrimaryKey => "datasync::manifest::primary_key",
    /// A bad `partition_by`.
    ManifestPartition => "datasync::manifest::partition",
    /// A bad `cluster_by`.
    ManifestCluster => "datasync::manifest::cluster",
    /// Mode `merge` without `primary_key`.
    ManifestMergeWithoutKey => "datasync::manifest::merge_without_key",
    /// A `bigquery.labels` key or value that breaks BigQuery's label rules, or one datasync
    /// sets itself.
    ManifestLabel => "datasync::manifest::label",
    /// `lineage: true` with a column named like a lineage column in `columns` or
    /// `column_types`.
    ManifestLineageColumn => "datasync::manifest::lineage_column",
    /// Mode `incremental` without `cursor`.
    ManifestIncrementalWithoutCursor => "datasync::manifest::incremental_without_cursor",
    /// A `cursor` the mode does not use.
    ManifestCursorUnused => "datasync::manifest::cursor_unused",
    /// `deletes: soft|hard` on a table whose mode is not `merge` (or no merge table inherits
    /// the default).
    ManifestDeletesWithoutMerge => "datasync::manifest::deletes_without_merge",
    /// A custom SQL source (`query`) that is empty, holds several statements or parameters,
    /// or is named like a source table.
    ManifestQuery => "datasync::manifest::query",
    /// An environment variable with an invalid value.
    EnvInvalid => "datasync::env::invalid",
    /// An environment variable that is ignored.
    EnvIgnored => "datasync::env::ignored",
    /// A column option names a column the source table does not have.
    MappingUnknownColumn => "datasync::mapping::unknown_column",
    /// A column is listed twice in `columns`.
    MappingDuplicateColumn => "datasync::mapping::duplicate_column",
    /// No column is left to sync.
    MappingNoColumns => "datasync::mapping::no_columns",
    /// A column type has no lossless BigQuery type under the table's policies.
    MappingUnmappable => "datasync::mapping::unmappable",
    /// A note on a column's natural mapping (unknown type read as text, unconstrained numeric, …).
    MappingNaturalType => "datasync::mapping::natural_type",
    /// A column is renamed to a valid BigQuery name.
    MappingRenamed => "datasync::mapping::renamed",
    /// Two columns map to the same BigQuery name.
    MappingNameCollision => "datasync::mapping::name_collision",
    /// A `column_types` override may lose data.
    MappingLossyOverride => "datasync::mapping::lossy_override",
    /// A `column_types` override that cannot be honoured.
    MappingInvalidOverride => "datasync::mapping::invalid_override",
    /// NOT NULL columns mapped NULLABLE because a policy may write NULL.
    MappingRelaxedNullable => "datasync::mapping::relaxed_nullable",
    /// `partition_by` names a missing column or one of the wrong type.
    MappingPartition => "datasync::mapping::partition",
    /// `cluster_by` names a column that is not synced.
    MappingCluster => "datasync::mapping::cluster",
    /// `primary_key` names a column that is not synced.
    MappingPrimaryKey => "datasync::mapping::primary_key",
    /// `cursor` names a column that is not synced.
    MappingCursor => "datasync::mapping::cursor",
    /// A synced column takes the name of a lineage column (`lineage: true`).
    MappingLineageCollision => "datasync::mapping::lineage_collision",
    /// The change to the target is incompatible (type narrowed, column dropped, …).
    PlanIncompatible => "datasync::plan::incompatible",
    /// The table is blocked: an incompatible change without `allow_recreate`.
    PlanBlocked => "datasync::plan::blocked",
    /// The target would need creating or evolving but `auto_create` is off.
    PlanAutoCreateOff => "datasync::plan::auto_create_off",
    /// The target table does not exist.
    PlanMissingTarget => "datasync::plan::missing_target",
    /// A column gone from the source is kept in the target.
    PlanColumnKept => "datasync::plan::column_kept",
    /// Partitioning or clustering differ from the target's.
    PlanClusteringChange => "datasync::plan::clustering_change",
    /// The table is recreated (schema and rows replaced at once).
    PlanRecreate => "datasync::plan::recreate",
    /// A merge key that is not the source's primary key: duplicates are possible.
    PlanMergeKeyNotUnique => "datasync::plan::merge_key_not_unique",
    /// A nullable cursor: rows whose cursor is NULL are never past the maximum.
    PlanNullableCursor => "datasync::plan::nullable_cursor",
    /// The dry run that estimates a MERGE's bytes failed: its cost is unknown.
    PlanWriteCostUnknown => "datasync::plan::write_cost_unknown",
    /// The source table could not be read.
    PlanSourceError => "datasync::plan::source_error",
    /// The source table could not be mapped.
    PlanMappingError => "datasync::plan::mapping_error",
    /// A saved plan no longer matches the sources or targets.
    PlanStale => "datasync::plan::stale",
    /// The existing target has columns or a kind datasync cannot sync into.
    PlanUnsupportedTarget => "datasync::plan::unsupported_target",
    /// A table of the dataset that datasync created and no table of the manifest writes any
    /// more (it is kept: datasync never drops tables).
    PlanOrphanedTarget => "datasync::plan::orphaned_target",
    /// A table failed while apply ran it (the message says how, and what state it left).
    ApplyTableFailed => "datasync::apply::table_failed",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A string that is not a known [`Code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a datasync diagnostic code")]
pub struct UnknownCode(pub String);

impl FromStr for Code {
    type Err = UnknownCode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
            .ok_or_else(|| UnknownCode(text.to_string()))
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One problem or note, from any stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The stable code.
    pub code: Code,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, complete on its own.
    pub message: String,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// What it is about.
    pub location: Location,
}

impl Diagnostic {
    /// An error with no location yet.
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            severity: Severity::Error,
            message: message.into(),
            help: None,
            location: Location::None,
        }
    }

    /// A warning with no location yet.
    pub fn warning(code: Code, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    /// Sets the location.
    #[must_use]
    pub fn at(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// Locates it at a node of the manifest (its value is underlined).
    #[must_use]
    pub fn at_pointer(self, pointer: impl Into<String>) -> Self {
        self.at(Location::Manifest {
            pointer: pointer.into(),
            on_key: false,
        })
    }

    /// Underlines the key rather than the value (manifest locations only).
    #[must_use]
    pub fn on_key(mut self) -> Self {
        if let Location::Manifest { on_key, .. } = &mut self.location {
            *on_key = true;
        }
        self
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether it is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The manifest JSON pointer, when it is located in the manifest.
    pub fn pointer(&self) -> Option<&str> {
        match &self.location {
            Location::Manifest { pointer, .. } => Some(pointer),
            _ => None,
        }
    }

    /// The environment variable, when it is about one.
    pub fn env_var(&self) -> Option<&str> {
        match &self.location {
            Location::Env(var) => Some(var),
            _ => None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The messages of `diagnostics`, in order (for places that still speak in strings).
pub fn messages(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics
        .iter()
        .map(|diagnostic| diagnostic.message.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_namespaced_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let text = code.as_str();
            assert!(text.starts_with("datasync::"), "{text}");
            assert!(seen.insert(text), "duplicate {text}");
            assert_eq!(text.parse::<Code>(), Ok(*code));
        }
        assert!("datasync::nope".parse::<Code>().is_err());
    }

    #[test]
    fn diagnostics_serialize_with_the_code_string() {
        let diagnostic = Diagnostic::warning(Code::MappingLossyOverride, "may lose data")
            .at(Location::Column {
                table: "orders".into(),
                column: "total".into(),
            })
            .with_help("widen it");
        let json = serde_json::to_value(&diagnostic).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "code": "datasync::mapping::lossy_override",
                "severity": "warning",
                "message": "may lose data",
                "help": "widen it",
                "location": {"column": {"table": "orders", "column": "total"}},
            })
        );
        let back: Diagnostic = serde_json::from_value(json).unwrap();
        assert_eq!(back, diagnostic);
        assert_eq!(diagnostic.to_string(), "may lose data");
    }

    #[test]
    fn on_key_only_applies_to_manifest_locations() {
        let at_key = Diagnostic::error(Code::ManifestSchema, "x")
            .at_pointer("/a")
            .on_key();
        assert_eq!(
            at_key.location,
            Location::Manifest {
                pointer: "/a".into(),
                on_key: true
            }
        );
        assert_eq!(at_key.pointer(), Some("/a"));
        let env = Diagnostic::error(Code::EnvInvalid, "x")
            .at(Location::Env("V".into()))
            .on_key();
        assert_eq!(env.env_var(), Some("V"));
        assert_eq!(env.pointer(), None);
    }
}
