//! Values that must never be printed: passwords, connection URLs with credentials.
//!
//! [`Secret`] has a redacted `Debug` and `Display`; [`redact_url`] masks the password in a URL.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The text shown in place of a secret.
pub const REDACTED: &str = "********";

/// A string that is never shown by `Debug` or `Display`. Use [`Secret::expose`] at the one place
/// where the value is handed to a driver.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for handing to a driver. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Masks the password (and only the password) of a `scheme://user:password@host/...` URL.
/// Strings that are not URLs are returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:{}{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        REDACTED,
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug_and_display() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn url_password_is_masked() {
        assert_eq!(
            redact_url("postgres://app:p%40ss@db:5432/x?sslmode=require"),
            "postgres://app:********@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact_url("sqlite://data.db"), "sqlite://data.db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
