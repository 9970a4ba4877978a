//! Source engines and the facts about them that the manifest, the mapping and the sources
//! share: URL schemes, default ports, default qualifiers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A source database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// MySQL or MariaDB.
    Mysql,
    /// PostgreSQL.
    Postgres,
    /// SQLite (a local file).
    Sqlite,
}

impl SourceKind {
    /// Every engine, in the order error messages list them.
    pub const ALL: [SourceKind; 3] = [Self::Mysql, Self::Postgres, Self::Sqlite];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mysql => "mysql",
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }

    /// Other spellings accepted for the engine in environment variables (`DB_TYPE`).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Self::Mysql => &["mariadb"],
            Self::Postgres => &["postgresql", "pg"],
            Self::Sqlite => &[],
        }
    }

    /// The engine spelled `text` (its manifest spelling or an alias, any case, trimmed).
    pub fn from_alias(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text || kind.aliases().contains(&text.as_str()))
    }

    /// The manifest spellings as a list for messages: `mysql, postgres or sqlite`.
    pub fn choices() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.as_str()).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// The prefixes a connection URL of this engine starts with (the scheme, and `//` for a
    /// server).
    pub fn url_schemes(self) -> &'static [&'static str] {
        match self {
            Self::Mysql => &["mysql://", "mariadb://"],
            Self::Postgres => &["postgres://", "postgresql://"],
            Self::Sqlite => &["sqlite:"],
        }
    }

    /// Whether `url` starts with one of [`Self::url_schemes`].
    pub fn accepts_url(self, url: &str) -> bool {
        self.url_schemes()
            .iter()
            .any(|scheme| url.starts_with(scheme))
    }

    /// The default TCP port.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Self::Mysql => Some(3306),
            Self::Postgres => Some(5432),
            Self::Sqlite => None,
        }
    }

    /// The qualifier an unqualified table gets when the source sets no `schema`: `public` for
    /// PostgreSQL. `None` for engines whose tables are not qualified by a schema (MySQL asks the
    /// connection's database, SQLite has none); the source's `schema` setting only applies to
    /// engines with a default qualifier.
    pub fn default_qualifier(self) -> Option<&'static str> {
        match self {
            Self::Postgres => Some("public"),
            Self::Mysql | Self::Sqlite => None,
        }
    }

    /// A local file rather than a server: no host, user, TLS or table qualifier; `database` is
    /// the file's path.
    pub fn is_file(self) -> bool {
        matches!(self, Self::Sqlite)
    }

    /// Whether a source given by parts (not `url`) must name its `database`: the file of a
    /// file engine, or the database PostgreSQL connects to (MySQL may connect without one).
    pub fn needs_database(self) -> bool {
        matches!(self, Self::Postgres | Self::Sqlite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_facts() {
        assert_eq!(SourceKind::from_alias(" MariaDB "), Some(SourceKind::Mysql));
        assert_eq!(SourceKind::from_alias("pg"), Some(SourceKind::Postgres));
        assert_eq!(
            SourceKind::from_alias("postgresql"),
            Some(SourceKind::Postgres)
        );
        assert_eq!(SourceKind::from_alias("sqlite"), Some(SourceKind::Sqlite));
        assert_eq!(SourceKind::from_alias("oracle"), None);
        assert_eq!(SourceKind::choices(), "mysql, postgres or sqlite");
        assert!(SourceKind::Mysql.accepts_url("mariadb://h/db"));
        assert!(SourceKind::Postgres.accepts_url("postgresql://h/db"));
        assert!(SourceKind::Sqlite.accepts_url("sqlite:data.db"));
        assert!(!SourceKind::Postgres.accepts_url("mysql://h/db"));
        assert_eq!(SourceKind::Postgres.default_port(), Some(5432));
        assert_eq!(SourceKind::Sqlite.default_port(), None);
        assert_eq!(SourceKind::Postgres.default_qualifier(), Some("public"));
        assert_eq!(SourceKind::Mysql.default_qualifier(), None);
        assert!(SourceKind::Sqlite.is_file() && !SourceKind::Mysql.is_file());
        assert!(SourceKind::Postgres.needs_database() && !SourceKind::Mysql.needs_database());
    }
}
