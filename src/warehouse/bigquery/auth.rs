//! Credentials: which token source a [`super::BigQuery`] client uses.

use std::sync::Arc;

use async_trait::async_trait;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::yup_oauth2;
use serde_json::Value;

use super::super::WarehouseError;

const SCOPES: &[&str] = &["https://www.googleapis.com/auth/bigquery"];

/// The emulator takes any token.
#[derive(Clone)]
pub(super) struct StaticToken;

#[async_trait]
impl Authenticator for StaticToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator-dummy-token".into())
    }
}

/// A yup-oauth2 authenticator (service account key or application default credentials) behind
/// the crate's [`Authenticator`] trait (the crate's own constructors are not public).
#[derive(Clone)]
struct YupToken(yup_oauth2::authenticator::DefaultAuthenticator);

#[async_trait]
impl Authenticator for YupToken {
    async fn access_token(&self) -> Result<String, BQError> {
        let token = self.0.token(SCOPES).await?;
        token.token().map(str::to_string).ok_or(BQError::NoToken)
    }
}

/// The application-default credentials file gcloud writes (`gcloud auth application-default login`)
/// (`BigQuerySpec::gcloud_credentials`, resolved from the environment snapshot), when it exists.
fn gcloud_adc_file(path: Option<&str>) -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(path?);
    path.is_file().then_some(path)
}

/// Builds the authenticator: a credentials file (`bigquery.credentials`, else
/// `GOOGLE_APPLICATION_CREDENTIALS` — the manifest overlay puts it there — else gcloud's
/// application-default file) holding a service account or an authorized user; without a file,
/// the GCE/GKE metadata server.
pub(super) async fn build_authenticator(
    credentials: Option<&str>,
    gcloud_credentials: Option<&str>,
) -> Result<Arc<dyn Authenticator>, WarehouseError> {
    let path = credentials
        .map(std::path::PathBuf::from)
        .or_else(|| gcloud_adc_file(gcloud_credentials));
    let auth = match path {
        Some(path) => {
            let shown = path.display().to_string();
            let text = tokio::fs::read(&path).await.map_err(|error| {
                WarehouseError::Auth(format!("cannot read credentials {shown}: {error}"))
            })?;
            let kind = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|value| {
                    value
                        .get("type")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            match kind.as_str() {
                "service_account" => {
                    let key = yup_oauth2::parse_service_account_key(&text).map_err(|error| {
                        WarehouseError::Auth(format!("service-account key {shown}: {error}"))
                    })?;
                    yup_oauth2::ServiceAccountAuthenticator::builder(key)
                        .build()
                        .await
                        .map_err(|error| {
                            WarehouseError::Auth(format!("service-account key {shown}: {error}"))
                        })?
                }
                "authorized_user" => {
                    let secret = yup_oauth2::read_authorized_user_secret(&path)
                        .await
                        .map_err(|error| {
                            WarehouseError::Auth(format!(
                                "authorized-user credentials {shown}: {error}"
                            ))
                        })?;
                    yup_oauth2::AuthorizedUserAuthenticator::builder(secret)
                        .build()
                        .await
                        .map_err(|error| {
                            WarehouseError::Auth(format!(
                                "authorized-user credentials {shown}: {error}"
                            ))
                        })?
                }
                other => {
                    return Err(WarehouseError::Auth(format!(
                        "credentials {shown} are of type `{other}`; use a service-account key or `gcloud auth application-default login`"
                    )));
                }
            }
        }
        None => {
            let options = yup_oauth2::ApplicationDefaultCredentialsFlowOpts::default();
            let built = match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(
                options,
            )
            .await
            {
                yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::InstanceMetadata(
                    builder,
                ) => builder.build().await,
                yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::ServiceAccount(
                    builder,
                ) => builder.build().await,
            };
            built.map_err(|error| {
                WarehouseError::Auth(format!("application default credentials: {error}"))
            })?
        }
    };
    Ok(Arc::new(YupToken(auth)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn build_from(contents: &str) -> Result<Arc<dyn Authenticator>, WarehouseError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, contents).unwrap();
        build_authenticator(path.to_str(), None).await
    }

    #[tokio::test]
    async fn credentials_files_are_recognised_by_type() {
        // gcloud's `application-default login` file.
        let user = r#"{"type": "authorized_user", "client_id": "id.apps.googleusercontent.com",
                       "client_secret": "s", "refresh_token": "r"}"#;
        assert!(build_from(user).await.is_ok());
        let error = build_from(r#"{"type": "external_account"}"#)
            .await
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("of type `external_account`"),
            "{error}"
        );
        let error = build_from("not json").await.err().unwrap();
        assert!(error.to_string().contains("of type ``"), "{error}");
        let missing = build_authenticator(Some("/nonexistent/credentials.json"), None)
            .await
            .err()
            .unwrap();
        assert!(
            missing
                .to_string()
                .contains("cannot read credentials /nonexistent/credentials.json"),
            "{missing}"
        );
    }
}
