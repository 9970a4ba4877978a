//! Credentials: which token source a [`super::BigQuery`] client uses, found in the order of
//! Google's Application Default Credentials (<https://google.aip.dev/auth/4110>):
//!
//! 1. a credentials file: `bigquery.credentials`, else `GOOGLE_APPLICATION_CREDENTIALS`;
//! 2. gcloud's application-default file (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`);
//! 3. the metadata server (GCE, GKE, Cloud Run, Cloud Build), `GCE_METADATA_HOST` if set.
//!
//! A file may be a `service_account` key, gcloud's `authorized_user`, an `external_account`
//! (Workload Identity Federation: file- or URL-sourced subject token, text or JSON, with or
//! without `service_account_impersonation_url`) or an `impersonated_service_account`.
//! `bigquery.impersonate_service_account` impersonates on top of any of them.
//!
//! The exchanges are written here over reqwest rather than taken from yup-oauth2 (which
//! gcp-bigquery-client bundles): yup's hyper client honours neither `HTTPS_PROXY` nor our CA
//! bundle, so behind a proxy-only egress its token calls fail while the API calls go through;
//! its authorized-user and metadata flows ignore the file's `token_uri` and `GCE_METADATA_HOST`;
//! and its ADC builder only knows service-account keys and the metadata server. Each exchange is
//! one documented HTTP call (OAuth 2.0 JWT bearer and refresh grants, STS token exchange,
//! IAM Credentials `generateAccessToken`, metadata `token`), made with the same proxy and CA
//! configuration as the API client ([`super::net::Network`]). gcp-bigquery-client's
//! [`Authenticator`] trait stays the seam between [`super::BigQuery`] and these sources.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::WarehouseError;
use crate::manifest::resolve::BigQueryEnv;

/// The scope of BigQuery tokens.
const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// The scope STS and IAM Credentials need for the token they exchange.
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's OAuth 2.0 token endpoint (when a file names none).
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The IAM Credentials API.
pub(super) const IAM_CREDENTIALS_BASE: &str = "https://iamcredentials.googleapis.com";
/// The metadata server, by address (no DNS), as Google's clients reach it.
const METADATA_HOST: &str = "169.254.169.254";
/// A token is renewed this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The emulator takes any token.
#[derive(Clone)]
pub(super) struct StaticToken;

#[async_trait]
impl Authenticator for StaticToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator-dummy-token".into())
    }
}

/// What the token sources are built from.
pub(super) struct AuthConfig {
    /// `bigquery.credentials` (the overlay fills it from `GOOGLE_APPLICATION_CREDENTIALS`).
    pub credentials: Option<String>,
    /// `bigquery.impersonate_service_account`.
    pub impersonate: Option<String>,
    /// A custom API endpoint is set (for the "is it an emulator?" hint).
    pub endpoint: Option<String>,
    pub env: BigQueryEnv,
    /// Proxied, custom-CA client for token endpoints.
    pub http: reqwest::Client,
    /// Unproxied client for the metadata server.
    pub metadata_http: reqwest::Client,
    /// IAM Credentials base URL (for `impersonate_service_account`).
    pub iam_base: String,
}

/// Loaded credentials: the token source and who it is (for error messages).
pub(super) struct Credentials {
    pub token: Arc<dyn Authenticator>,
    pub principal: String,
}

impl Credentials {
    pub(super) fn emulator() -> Self {
        Self {
            token: Arc::new(StaticToken),
            principal: "the emulator's dummy token".into(),
        }
    }
}

/// The error text a token source failed with, carried through [`BQError`] (the trait's error
/// type has no plain-message variant).
pub(super) fn auth_message(error: &BQError) -> String {
    match error {
        BQError::InvalidApplicationDefaultCredentialsAuthenticator(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

fn bq_error(message: String) -> BQError {
    BQError::InvalidApplicationDefaultCredentialsAuthenticator(std::io::Error::other(message))
}

// ---------------------------------------------------------------------------------------------
// Credential files.

#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct AuthorizedUser {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    account: Option<String>,
}

#[derive(Deserialize)]
struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    service_account_impersonation_url: Option<String>,
    #[serde(default)]
    service_account_impersonation: Option<ImpersonationOptions>,
    #[serde(default)]
    workforce_pool_user_project: Option<String>,
    credential_source: CredentialSource,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    #[serde(default)]
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct CredentialSource {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    format: Option<SubjectTokenFormat>,
    #[serde(default)]
    environment_id: Option<String>,
    #[serde(default)]
    executable: Option<Value>,
}

#[derive(Deserialize)]
struct SubjectTokenFormat {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct ImpersonatedFile {
    service_account_impersonation_url: String,
    source_credentials: Value,
    #[serde(default)]
    delegates: Vec<String>,
}

/// Where tokens come from.
enum Source {
    ServiceAccount(ServiceAccountKey),
    AuthorizedUser(AuthorizedUser),
    External(Box<ExternalAccount>),
    Metadata {
        host: String,
    },
    /// IAM Credentials `generateAccessToken` for a service account, authorized by `base`.
    Impersonated {
        base: Box<Source>,
        url: String,
        delegates: Vec<String>,
        lifetime: u64,
    },
}

impl Source {
    /// Who the token is for, as error messages name it.
    fn principal(&self) -> String {
        match self {
            Self::ServiceAccount(key) => format!("service account {}", key.client_email),
            Self::AuthorizedUser(user) => match &user.account {
                Some(account) if !account.is_empty() => format!("user credentials of {account}"),
                _ => "user credentials (gcloud auth application-default login)".into(),
            },
            Self::External(config) => match &config.service_account_impersonation_url {
                Some(url) => format!(
                    "service account {} (impersonated by the external account of {})",
                    impersonated_email(url),
                    config.audience
                ),
                None => format!("external account (workload identity) {}", config.audience),
            },
            Self::Metadata { host } => {
                format!("the default service account of the metadata server {host}")
            }
            Self::Impersonated { base, url, .. } => format!(
                "service account {} (impersonated by {})",
                impersonated_email(url),
                base.principal()
            ),
        }
    }
}

/// `…/serviceAccounts/{email}:generateAccessToken` → `email`.
fn impersonated_email(url: &str) -> &str {
    url.rsplit_once("serviceAccounts/")
        .map_or(url, |(_, tail)| tail.split(':').next().unwrap_or(tail))
}

/// Parses a credentials file's JSON into a token source.
fn parse_source(value: &Value, shown: &str, nested: bool) -> Result<Source, String> {
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "service_account" => ServiceAccountKey::deserialize(value)
            .map(Source::ServiceAccount)
            .map_err(|error| format!("service-account key {shown} is incomplete: {error}")),
        "authorized_user" => AuthorizedUser::deserialize(value)
            .map(Source::AuthorizedUser)
            .map_err(|error| {
                format!("authorized-user credentials {shown} are incomplete: {error}")
            }),
        "external_account" if !nested => {
            let config = ExternalAccount::deserialize(value).map_err(|error| {
                format!("external-account (workload identity) credentials {shown} are incomplete: {error}")
            })?;
            let source = &config.credential_source;
            if source.environment_id.is_some() {
                return Err(format!(
                    "external-account credentials {shown} take their subject token from AWS (`environment_id`), which datasync does not support; use a file- or URL-sourced credential configuration"
                ));
            }
            if source.executable.is_some() {
                return Err(format!(
                    "external-account credentials {shown} run an executable for their subject token, which datasync does not support; use a file- or URL-sourced credential configuration"
                ));
            }
            if source.file.is_none() && source.url.is_none() {
                return Err(format!(
                    "external-account credentials {shown} have no `credential_source.file` or `credential_source.url`"
                ));
            }
            Ok(Source::External(Box::new(config)))
        }
        "impersonated_service_account" if !nested => {
            let file = ImpersonatedFile::deserialize(value).map_err(|error| {
                format!("impersonated-service-account credentials {shown} are incomplete: {error}")
            })?;
            let base = parse_source(
                &file.source_credentials,
                &format!("{shown} (source_credentials)"),
                true,
            )?;
            Ok(Source::Impersonated {
                base: Box::new(base),
                url: file.service_account_impersonation_url,
                delegates: file.delegates,
                lifetime: 3600,
            })
        }
        "" => Err(format!(
            "credentials {shown} are not a credentials file (no `type`)"
        )),
        other => Err(format!(
            "credentials {shown} are of type `{other}`, which datasync does not support; use a service-account key, `gcloud auth application-default login`, or a workload identity federation (`external_account`) file"
        )),
    }
}

async fn read_file(path: &str) -> Result<Source, String> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|error| format!("cannot read credentials {path}: {error}"))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|error| format!("credentials {path} are not valid JSON: {error}"))?;
    parse_source(&value, path, false)
}

/// gcloud's application-default credentials file, where gcloud writes it.
fn gcloud_adc_file(env: &BigQueryEnv) -> Option<PathBuf> {
    let config = env
        .cloudsdk_config
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| {
            env.home
                .as_ref()
                .map(|home| PathBuf::from(home).join(".config/gcloud"))
        })?;
    Some(config.join("application_default_credentials.json"))
}

/// Is a metadata server answering at `host`?
async fn metadata_reachable(http: &reqwest::Client, host: &str) -> Result<(), String> {
    let response = http
        .get(format!("http://{host}/computeMetadata/v1/"))
        .header("Metadata-Flavor", "Google")
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|error| describe(&error))?;
    match response.headers().get("metadata-flavor") {
        Some(flavor) if flavor == "Google" => Ok(()),
        _ => Err(format!(
            "HTTP {} without `Metadata-Flavor: Google`",
            response.status().as_u16()
        )),
    }
}

/// Finds the credentials (in ADC order) and wraps them as an [`Authenticator`].
pub(super) async fn build(config: &AuthConfig) -> Result<Credentials, WarehouseError> {
    let mut tried: Vec<String> = Vec::new();
    let source = if let Some(path) = &config.credentials {
        read_file(path).await.map_err(WarehouseError::Auth)?
    } else {
        tried.push(
            "a credentials file: `bigquery.credentials` and GOOGLE_APPLICATION_CREDENTIALS are not set"
                .into(),
        );
        let gcloud = gcloud_adc_file(&config.env);
        match &gcloud {
            Some(path) if path.is_file() => read_file(&path.display().to_string())
                .await
                .map_err(WarehouseError::Auth)?,
            _ => {
                tried.push(match &gcloud {
                    Some(path) => format!(
                        "gcloud's application-default credentials: {} does not exist",
                        path.display()
                    ),
                    None => "gcloud's application-default credentials: neither CLOUDSDK_CONFIG nor HOME is set".into(),
                });
                let host = config
                    .env
                    .gce_metadata_host
                    .clone()
                    .unwrap_or_else(|| METADATA_HOST.to_string());
                match metadata_reachable(&config.metadata_http, &host).await {
                    Ok(()) => Source::Metadata { host },
                    Err(error) => {
                        tried.push(format!(
                            "the metadata server (GCE, GKE, Cloud Run) at {host}: {error}"
                        ));
                        return Err(WarehouseError::Auth(no_credentials(
                            &tried,
                            config.endpoint.as_deref(),
                        )));
                    }
                }
            }
        }
    };
    let source = match &config.impersonate {
        Some(email) => Source::Impersonated {
            base: Box::new(source),
            url: format!(
                "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
                config.iam_base.trim_end_matches('/')
            ),
            delegates: Vec::new(),
            lifetime: 3600,
        },
        None => source,
    };
    let principal = source.principal();
    let token = TokenSource {
        inner: Arc::new(Inner {
            source,
            http: config.http.clone(),
            metadata_http: config.metadata_http.clone(),
            principal: principal.clone(),
            cache: tokio::sync::Mutex::new(None),
        }),
    };
    Ok(Credentials {
        token: Arc::new(token),
        principal,
    })
}

fn no_credentials(tried: &[String], endpoint: Option<&str>) -> String {
    let mut message = String::from("no Google credentials found; tried, in order:");
    for (position, step) in tried.iter().enumerate() {
        message.push_str(&format!("\n  {}. {step}", position + 1));
    }
    message.push_str(
        "\nto fix: on a workstation run `gcloud auth application-default login`; \
         elsewhere set GOOGLE_APPLICATION_CREDENTIALS (or `bigquery.credentials`) to a service-account key \
         or a workload identity federation file (in GitHub Actions, google-github-actions/auth writes one); \
         on Google Cloud, attach a service account",
    );
    if let Some(endpoint) = endpoint {
        message.push_str(&format!(
            "; if {endpoint} is an emulator, set `bigquery.emulator: true` or BIGQUERY_EMULATOR_HOST"
        ));
    }
    message
}

// ---------------------------------------------------------------------------------------------
// Tokens.

struct Token {
    value: String,
    expires: Instant,
}

struct Inner {
    source: Source,
    http: reqwest::Client,
    metadata_http: reqwest::Client,
    principal: String,
    cache: tokio::sync::Mutex<Option<Token>>,
}

/// A cached token source behind the [`Authenticator`] seam.
#[derive(Clone)]
struct TokenSource {
    inner: Arc<Inner>,
}

#[async_trait]
impl Authenticator for TokenSource {
    async fn access_token(&self) -> Result<String, BQError> {
        let inner = &self.inner;
        let mut cache = inner.cache.lock().await;
        if let Some(token) = cache.as_ref()
            && token.expires > Instant::now() + EXPIRY_MARGIN
        {
            return Ok(token.value.clone());
        }
        let token = fetch(inner, &inner.source, BIGQUERY_SCOPE)
            .await
            .map_err(|error| {
                bq_error(format!(
                    "cannot get a token for {}: {error}",
                    inner.principal
                ))
            })?;
        let value = token.value.clone();
        *cache = Some(token);
        Ok(value)
    }
}

/// A standard OAuth 2.0 token response.
#[derive(Deserialize)]
struct OAuthToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl OAuthToken {
    fn token(self) -> Token {
        Token {
            value: self.access_token,
            expires: Instant::now() + Duration::from_secs(self.expires_in.unwrap_or(3600)),
        }
    }
}

fn fetch<'a>(
    inner: &'a Inner,
    source: &'a Source,
    scope: &'a str,
) -> BoxFuture<'a, Result<Token, String>> {
    Box::pin(async move {
        match source {
            Source::ServiceAccount(key) => {
                let token_uri = key.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
                let assertion = service_account_jwt(key, token_uri, scope)?;
                let form = [
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ];
                let reply = post_form(&inner.http, token_uri, &form).await?;
                parse::<OAuthToken>(token_uri, &reply).map(OAuthToken::token)
            }
            Source::AuthorizedUser(user) => {
                let token_uri = user.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
                let form = [
                    ("grant_type", "refresh_token"),
                    ("client_id", user.client_id.as_str()),
                    ("client_secret", user.client_secret.as_str()),
                    ("refresh_token", user.refresh_token.as_str()),
                ];
                let reply = post_form(&inner.http, token_uri, &form).await?;
                parse::<OAuthToken>(token_uri, &reply).map(OAuthToken::token)
            }
            Source::External(config) => external_account(inner, config, scope).await,
            Source::Metadata { host } => {
                let url = format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                );
                let response = inner
                    .metadata_http
                    .get(&url)
                    .query(&[("scopes", scope)])
                    .header("Metadata-Flavor", "Google")
                    .send()
                    .await
                    .map_err(|error| format!("{url}: {}", describe(&error)))?;
                let reply = read_reply(&url, response).await?;
                parse::<OAuthToken>(&url, &reply).map(OAuthToken::token)
            }
            Source::Impersonated {
                base,
                url,
                delegates,
                lifetime,
            } => {
                let base_token = fetch(inner, base, CLOUD_PLATFORM_SCOPE).await?;
                generate_access_token(inner, url, &base_token.value, delegates, *lifetime, scope)
                    .await
            }
        }
    })
}

/// Workload Identity Federation: subject token → STS token exchange (RFC 8693) → optionally
/// IAM Credentials `generateAccessToken` for the configured service account.
async fn external_account(
    inner: &Inner,
    config: &ExternalAccount,
    scope: &str,
) -> Result<Token, String> {
    let subject = subject_token(inner, &config.credential_source).await?;
    let token_url = config
        .token_url
        .as_deref()
        .unwrap_or("https://sts.googleapis.com/v1/token");
    let sts_scope = if config.service_account_impersonation_url.is_some() {
        CLOUD_PLATFORM_SCOPE
    } else {
        scope
    };
    let options = config
        .workforce_pool_user_project
        .as_ref()
        .map(|project| json!({ "userProject": project }).to_string());
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("audience", config.audience.as_str()),
        ("scope", sts_scope),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token", subject.as_str()),
        ("subject_token_type", config.subject_token_type.as_str()),
    ];
    if let Some(options) = &options {
        form.push(("options", options.as_str()));
    }
    let reply = post_form(&inner.http, token_url, &form).await?;
    let sts = parse::<OAuthToken>(token_url, &reply)?.token();
    match &config.service_account_impersonation_url {
        None => Ok(sts),
        Some(url) => {
            let lifetime = config
                .service_account_impersonation
                .as_ref()
                .and_then(|options| options.token_lifetime_seconds)
                .unwrap_or(3600);
            generate_access_token(inner, url, &sts.value, &[], lifetime, scope).await
        }
    }
}

/// The subject token of an external account: a file or a URL, as text or a JSON field.
async fn subject_token(inner: &Inner, source: &CredentialSource) -> Result<String, String> {
    let (raw, from) = if let Some(path) = &source.file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|error| format!("cannot read the subject token file {path}: {error}"))?;
        (text, path.clone())
    } else if let Some(url) = &source.url {
        let mut request = inner.http.get(url);
        for (name, value) in &source.headers {
            request = request.header(name, value);
        }
        let shown = shown_url(url);
        let response = request
            .send()
            .await
            .map_err(|error| format!("subject token from {shown}: {}", describe(&error)))?;
        let reply = read_reply(&shown, response).await?;
        (String::from_utf8_lossy(&reply).into_owned(), shown)
    } else {
        return Err("the credential source has neither `file` nor `url`".into());
    };
    let format = source.format.as_ref();
    match format.and_then(|format| format.kind.as_deref()) {
        Some("json") => {
            let field = format
                .and_then(|format| format.subject_token_field_name.as_deref())
                .ok_or("`credential_source.format.subject_token_field_name` is missing")?;
            let value: Value = serde_json::from_str(&raw)
                .map_err(|error| format!("the subject token from {from} is not JSON: {error}"))?;
            value
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the subject token from {from} has no string `{field}`"))
        }
        None | Some("text") => {
            let token = raw.trim().to_string();
            if token.is_empty() {
                Err(format!("the subject token from {from} is empty"))
            } else {
                Ok(token)
            }
        }
        Some(other) => Err(format!(
            "`credential_source.format.type` `{other}` is neither `text` nor `json`"
        )),
    }
}

/// IAM Credentials `generateAccessToken`, authorized by `bearer`.
async fn generate_access_token(
    inner: &Inner,
    url: &str,
    bearer: &str,
    delegates: &[String],
    lifetime: u64,
    scope: &str,
) -> Result<Token, String> {
    let mut body = json!({ "scope": [scope], "lifetime": format!("{lifetime}s") });
    if !delegates.is_empty() {
        body["delegates"] = json!(delegates);
    }
    let response = inner
        .http
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .map_err(|error| format!("{url}: {}", describe(&error)))?;
    let reply = read_reply(url, response).await?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Generated {
        access_token: String,
        #[serde(default)]
        expire_time: Option<String>,
    }
    let generated = parse::<Generated>(url, &reply)?;
    let remaining = generated
        .expire_time
        .as_deref()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .and_then(|at| {
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .ok()
        })
        .unwrap_or(Duration::from_secs(lifetime));
    Ok(Token {
        value: generated.access_token,
        expires: Instant::now() + remaining,
    })
}

/// The RS256-signed JWT of the OAuth 2.0 JWT bearer grant (RFC 7523) for a service account.
fn service_account_jwt(
    key: &ServiceAccountKey,
    audience: &str,
    scope: &str,
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let mut header = json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(id) = &key.private_key_id {
        header["kid"] = json!(id);
    }
    let claims = json!({
        "iss": key.client_email,
        "scope": scope,
        "aud": audience,
        "iat": now,
        "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let der = pem_body(&key.private_key).ok_or_else(|| {
        format!(
            "the private key of {} is not a PEM private key",
            key.client_email
        )
    })?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .or_else(|_| ring::signature::RsaKeyPair::from_der(&der))
        .map_err(|error| {
            format!(
                "the private key of {} is not an RSA key: {error}",
                key.client_email
            )
        })?;
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| format!("cannot sign with the private key of {}", key.client_email))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The DER bytes of the first PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN ")?;
    let after = &pem[start..];
    let body_start = after.find('\n')? + 1;
    let body_end = after.find("-----END ")?;
    let body: String = after[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<bytes::Bytes, String> {
    let response = http
        .post(url)
        .form(form)
        .send()
        .await
        .map_err(|error| format!("{url}: {}", describe(&error)))?;
    read_reply(url, response).await
}

/// The body of a 2xx answer; otherwise the OAuth/Google error it carries.
async fn read_reply(url: &str, response: reqwest::Response) -> Result<bytes::Bytes, String> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| format!("{url}: {}", describe(&error)))?;
    if status.is_success() {
        return Ok(body);
    }
    let detail = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| {
            // OAuth: {"error": "invalid_grant", "error_description": "…"};
            // Google APIs: {"error": {"code": 403, "message": "…", "status": "…"}}.
            let error = value.get("error")?;
            if let Some(code) = error.as_str() {
                let description = value
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Some(
                    format!("{code}: {description}")
                        .trim_end_matches(": ")
                        .to_string(),
                )
            } else {
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    Err(format!("{url} answered HTTP {}: {detail}", status.as_u16()))
}

fn parse<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|error| format!("{url} answered something that is not a token: {error}"))
}

/// A URL without its query (GitHub's OIDC request URL carries no secret, but others might).
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// A transport error with its causes, without the URL.
fn describe(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "unreachable".to_string()
    } else {
        String::from("request failed")
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

// ---------------------------------------------------------------------------------------------
// 401/403 from BigQuery.

/// Explains a 401/403 from BigQuery: who was refused and which permission BigQuery named.
pub(super) fn explain_denied(
    status: u16,
    reason: &str,
    message: &str,
    principal: &str,
) -> Option<String> {
    let quota = [
        "rateLimitExceeded",
        "quotaExceeded",
        "billingTierLimitExceeded",
    ];
    if !(status == 401 || status == 403) || quota.contains(&reason) {
        return None;
    }
    if status == 401 {
        return Some(format!(
            "BigQuery rejected the token of {principal} ({message}); the credentials are invalid, expired or revoked: renew them (e.g. `gcloud auth application-default login`) or check the credentials file"
        ));
    }
    let permission = regex::Regex::new(r"bigquery\.[A-Za-z]+\.[A-Za-z]+")
        .ok()
        .and_then(|pattern| {
            pattern
                .find(message)
                .map(|found| found.as_str().to_string())
        });
    Some(match permission {
        Some(permission) => format!(
            "{principal} lacks the permission `{permission}` ({message}); grant it a role holding it, e.g. roles/bigquery.dataEditor on the dataset and roles/bigquery.jobUser on the project"
        ),
        None => format!(
            "access denied to {principal} ({message}); it needs roles/bigquery.dataEditor on the dataset and roles/bigquery.jobUser on the project"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_recognised_by_type() {
        let parse =
            |text: &str| parse_source(&serde_json::from_str(text).unwrap(), "f.json", false);
        let user = r#"{"type": "authorized_user", "client_id": "id", "client_secret": "s", "refresh_token": "r"}"#;
        assert!(matches!(parse(user), Ok(Source::AuthorizedUser(_))));
        let aws = r#"{"type": "external_account", "audience": "a", "subject_token_type": "t",
                      "credential_source": {"environment_id": "aws1", "url": "http://x"}}"#;
        let error = parse(aws).err().unwrap();
        assert!(error.contains("AWS"), "{error}");
        let error = parse(r#"{"type": "gdch_service_account"}"#).err().unwrap();
        assert!(error.contains("of type `gdch_service_account`"), "{error}");
        let error = parse("{}").err().unwrap();
        assert!(error.contains("no `type`"), "{error}");
    }

    #[test]
    fn denied_names_the_principal_and_the_permission() {
        let text = explain_denied(
            403,
            "accessDenied",
            "Access Denied: Dataset p:d: Permission bigquery.datasets.get denied on dataset p:d (or it may not exist).",
            "service account sa@p.iam.gserviceaccount.com",
        )
        .unwrap();
        assert!(text.starts_with("service account sa@p.iam.gserviceaccount.com lacks the permission `bigquery.datasets.get`"), "{text}");
        assert!(explain_denied(403, "rateLimitExceeded", "slow", "x").is_none());
        assert!(explain_denied(404, "notFound", "x", "x").is_none());
        let text = explain_denied(
            401,
            "",
            "Request had invalid authentication credentials.",
            "user credentials of a@b.c",
        )
        .unwrap();
        assert!(text.contains("user credentials of a@b.c"), "{text}");
    }
}
