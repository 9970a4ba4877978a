//! Authentication against loopback fakes of Google's protocols (no Google, no emulator): every
//! Application Default Credentials type, impersonation, the metadata server, "an endpoint is not
//! an emulator", proxies and a custom CA, and the error messages. Each fake asserts what the real
//! service requires; a recording BigQuery fake asserts the `Authorization` of the first API call.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::fakes::{Fake, Reply, Seen, TestCa, reply, serve, serve_tls};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use datasync::manifest::resolve::{BigQueryEnv, BigQuerySpec};
use datasync::warehouse::{BigQuery, RetryPolicy, Warehouse};
use serde_json::{Value, json};

/// A throw-away RSA key of a fake service account (PKCS#8) and its public key (PKCS#1 DER).
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCpXtDStQqUjtWH\nySg8LsWN6274NE/WMJ98Gp4rM0QctAaCimWAAj4ez58Um2PzAXbKF+6lsDVGoqZ6\n9q7qO5DUzNYreQ0b5zx2y/I9auy1CfV5BuY9lt36kwpYs6A7HZcjZp5f7etbB4oe\nCzlhMq8COo+4VJVvIpgqv7feOt76S/Hzfu/+3kRDKDdy7c+8+sEQAhIULLIzEyLL\nmqTbVptLiGMUrWLxW14NhY1fK5B8pVv+vUY0VWgAmWEuZrw1nzL54TJST8a9B65Y\nUH9KqbKRdS49brkjuwslPfiI69H4/pXvbSYxvwJU8BgSs3kX19cQ4WRCQ6NllwQD\nyiDqCcwtAgMBAAECggEATcJWvE5bD65uEXvEqbDNiWU8Wt7lgpBrQFaWJH5SeJ0c\nWgWBKR6ed5XZ0uOupSwYZhtLuS0noIjfRxgHYUm8qj5q26WlY5ir1Vy4GAOFrm5m\nkUyeG0uvGTI171h0qX9h2uJrtt4sDmxtOHLtwpa665qITlgjDVWEKChCGdjMc3v4\nT3rahLkAh8/N/47/WeB25dQ9iqZdVIW8DsAqpmP0KzbcO6Djfn6XdLT5OD+Ic3rx\ngKj148khIIlXqd1gc4jFLT2uIANOQfgu7gFcja8/nUCByvfbaCHt5dVuSu/o5PZf\nvWbK51rx0wwhiJZF3fVhVktJAzYFV4M0od+hVyhQXwKBgQDWQ39Od5zYxnO4Yq15\nyX2rriZpX7rUEDnYBUkMCEKMWzbHdbm6I0iS/W3O28mF0fe0BQxyJhqkbgSbPlk/\nDkx3bzPY7UTaoLAQeA4X5TbHL65oP1UkEIndCufLbxns0FRjaXhiIiRGRStutgti\njyILurbmzmGsTwaDtzDM6RhaqwKBgQDKXKnLsLQHI2qzqIXxP61aR4lhmA7QpbRz\nZKNXNnmT/ksWN1VOrrhHXrAree2dAQQ8cFwRotak4LIMXxFaak1nlixI4Oolcxnp\nXjM2Qa+smYRiHm8nquzTHiqysas8NBOLajo900YaB+YCR5Zs4dLCD6YQtpUrXvcB\n0/ECB1X0hwKBgEF42pvlnP34lj/Pl2bRlR8y1fX5FKPcWXCTHOEaXQt6i+CjLp+c\nTH7uBfHh41CK+n/90vHGhvmbzLiLcsX73o3YYyV0S0frNiGyLcxLdFOlVEvynleo\n3he3T2Ewj+F3P3IpNmn2ONNoK39nDU+OoT6oTV91zQ7UDw+MmNLkn1aFAoGAA0ts\n7EcNN0yJUTF+NMZPoTem8fLS0uzPuk06J5JYemNaf5sZBXXsxCSzg5Gxn6vDkORX\na2YWTorl+zOVCb7PUc9tGyamSUPNeTIybUC2hn3dXOeX8bJjtrA4C76+xfUnGE77\nccQ90PCt+v2FYnJuxwAQORdv6Evcg6gatWi/KoMCgYA4MWiNTr86EHbH5+0j2HNr\n71o3g8K5sWTMzmiONDHWZZKrwDpXyvt50Qa3dAEbq3S8bKmCxtiMSOFIwsnD4DJJ\ngkOjwj8c7cvyVv9fIIbEvbOG92QzWgizi3eOsRAsjJrQLLhtpKFhPE0vCwnPvcz6\nL7Ph014u6un+Oho4K5yIJw==\n-----END PRIVATE KEY-----\n";
const PUBLIC_KEY_DER: &str = "MIIBCgKCAQEAqV7Q0rUKlI7Vh8koPC7Fjetu+DRP1jCffBqeKzNEHLQGgoplgAI+Hs+fFJtj8wF2yhfupbA1RqKmevau6juQ1MzWK3kNG+c8dsvyPWrstQn1eQbmPZbd+pMKWLOgOx2XI2aeX+3rWweKHgs5YTKvAjqPuFSVbyKYKr+33jre+kvx837v/t5EQyg3cu3PvPrBEAISFCyyMxMiy5qk21abS4hjFK1i8VteDYWNXyuQfKVb/r1GNFVoAJlhLma8NZ8y+eEyUk/GvQeuWFB/SqmykXUuPW65I7sLJT34iOvR+P6V720mMb8CVPAYErN5F9fXEOFkQkOjZZcEA8og6gnMLQIDAQAB";

const SA_EMAIL: &str = "loader@p.iam.gserviceaccount.com";
const TARGET_SA: &str = "ci@p.iam.gserviceaccount.com";
const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const AUDIENCE: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/github/providers/repo";

/// A BigQuery fake answering datasets.get.
async fn bigquery() -> Fake {
    serve(bigquery_handler()).await
}

fn bigquery_handler() -> crate::support::fakes::Handler {
    Arc::new(|seen: &Seen| {
        if seen.path() == "/bigquery/v2/projects/p/datasets/d" {
            reply(
                200,
                r#"{"datasetReference":{"projectId":"p","datasetId":"d"},"location":"US"}"#,
            )
        } else {
            reply(404, r#"{"error":{"code":404,"message":"no such route"}}"#)
        }
    })
}

/// A spec for a real (non-emulator) endpoint, isolated from this machine's gcloud and
/// metadata server.
fn spec(endpoint: &str, credentials: Option<&Path>, home: &Path) -> BigQuerySpec {
    BigQuerySpec {
        project: "p".into(),
        dataset: "d".into(),
        location: Some("US".into()),
        endpoint: Some(endpoint.into()),
        credentials: credentials.map(|path| path.display().to_string()),
        env: BigQueryEnv {
            home: Some(home.display().to_string()),
            // Nothing listens on port 1: "no metadata server".
            gce_metadata_host: Some("127.0.0.1:1".into()),
            ..BigQueryEnv::default()
        },
        ..BigQuerySpec::default()
    }
}

fn client(spec: &BigQuerySpec) -> BigQuery {
    BigQuery::new(spec).unwrap().with_retry_policy(RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
        ..RetryPolicy::default()
    })
}

/// Runs datasets.get and returns the `Authorization` header BigQuery received.
async fn authorization_at_bigquery(spec: &BigQuerySpec, bigquery: &Fake) -> String {
    client(spec).ensure_dataset(false).await.unwrap();
    let seen = bigquery.seen();
    assert!(!seen.is_empty(), "BigQuery saw no request");
    seen[0]
        .header("authorization")
        .unwrap_or_default()
        .to_string()
}

fn write(dir: &Path, name: &str, value: &Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

fn service_account_key(token_uri: &str) -> Value {
    json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": PRIVATE_KEY,
        "client_email": SA_EMAIL,
        "client_id": "1",
        "token_uri": token_uri,
    })
}

/// Checks a JWT-bearer grant as Google's token endpoint does: grant type, RS256 signature with
/// the account's key, issuer, audience = the token endpoint, scope. Returns the scope.
fn check_jwt_grant(seen: &Seen, token_uri: &str) -> Result<String, String> {
    let form = seen.form();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Err(format!("grant_type {:?}", form.get("grant_type")));
    }
    let assertion = form.get("assertion").ok_or("no assertion")?;
    let (signed, signature) = assertion.rsplit_once('.').ok_or("not a JWT")?;
    let public = STANDARD.decode(PUBLIC_KEY_DER).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD
                .decode(signature)
                .map_err(|e| e.to_string())?,
        )
        .map_err(|_| "bad signature".to_string())?;
    let (header, claims) = signed.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    if header["alg"] != "RS256" || header["kid"] != "kid-1" {
        return Err(format!("header {header}"));
    }
    if claims["iss"] != SA_EMAIL || claims["aud"] != token_uri {
        return Err(format!("claims {claims}"));
    }
    Ok(claims["scope"].as_str().unwrap_or_default().to_string())
}

fn token(value: &str) -> Reply {
    reply(
        200,
        json!({"access_token": value, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    )
}

fn denied(message: &str) -> Reply {
    reply(
        400,
        json!({"error": "invalid_request", "error_description": message}).to_string(),
    )
}

#[tokio::test]
async fn a_service_account_key_signs_a_jwt_for_its_token_uri() {
    let dir = tempfile::tempdir().unwrap();
    let google = serve(Arc::new(|seen: &Seen| {
        let token_uri = format!("http://{}/token", seen.header("host").unwrap());
        match check_jwt_grant(seen, &token_uri) {
            Ok(scope) if scope == BIGQUERY_SCOPE => token("sa-token"),
            Ok(scope) => denied(&format!("scope {scope}")),
            Err(error) => denied(&error),
        }
    }))
    .await;
    let bigquery = bigquery().await;
    let key = write(
        dir.path(),
        "sa.json",
        &service_account_key(&format!("{}/token", google.base)),
    );
    let spec = spec(&bigquery.base, Some(&key), dir.path());
    assert_eq!(
        authorization_at_bigquery(&spec, &bigquery).await,
        "Bearer sa-token"
    );
    // The token is cached: a second call fetches none.
    let warehouse = client(&spec);
    warehouse.ensure_dataset(false).await.unwrap();
    warehouse.ensure_dataset(false).await.unwrap();
    assert_eq!(google.seen().len(), 2);
}

#[tokio::test]
async fn gcloud_user_credentials_are_found_in_cloudsdk_config() {
    let dir = tempfile::tempdir().unwrap();
    let google = serve(Arc::new(|seen: &Seen| {
        let form = seen.form();
        let expected = [
            ("grant_type", "refresh_token"),
            ("client_id", "cid.apps.googleusercontent.com"),
            ("client_secret", "csecret"),
            ("refresh_token", "refresh-1"),
        ];
        if expected
            .iter()
            .all(|(k, v)| form.get(*k).map(String::as_str) == Some(*v))
        {
            token("user-token")
        } else {
            denied(&format!("{form:?}"))
        }
    }))
    .await;
    let bigquery = bigquery().await;
    let config = dir.path().join("gcloud-config");
    std::fs::create_dir(&config).unwrap();
    write(
        &config,
        "application_default_credentials.json",
        &json!({
            "type": "authorized_user",
            "client_id": "cid.apps.googleusercontent.com",
            "client_secret": "csecret",
            "refresh_token": "refresh-1",
            "token_uri": format!("{}/token", google.base),
        }),
    );
    let mut spec = spec(&bigquery.base, None, dir.path());
    spec.env.cloudsdk_config = Some(config.display().to_string());
    assert_eq!(
        authorization_at_bigquery(&spec, &bigquery).await,
        "Bearer user-token"
    );
}

/// STS (`/v1/token`) and IAM Credentials (`generateAccessToken`) fakes, plus GitHub's OIDC
/// token endpoint (`/oidc`), on one server.
fn google_handler(
    subject: &'static str,
    sts_token: &'static str,
) -> crate::support::fakes::Handler {
    Arc::new(move |seen: &Seen| match seen.path() {
        "/oidc" => {
            // google-github-actions/auth: ACTIONS_ID_TOKEN_REQUEST_URL&audience=…, bearer
            // ACTIONS_ID_TOKEN_REQUEST_TOKEN; the answer is JSON with the token in `value`.
            if seen.header("authorization") != Some("Bearer gh-request-token")
                || seen.query().get("audience").map(String::as_str) != Some(AUDIENCE)
            {
                return reply(401, "{}");
            }
            reply(200, json!({"count": 1, "value": subject}).to_string())
        }
        "/v1/token" => {
            let form = seen.form();
            let ok = form.get("grant_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                && form.get("audience").map(String::as_str) == Some(AUDIENCE)
                && form.get("subject_token").map(String::as_str) == Some(subject)
                && form.get("subject_token_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:token-type:jwt")
                && form.get("requested_token_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:token-type:access_token")
                && form.contains_key("scope");
            if ok {
                reply(
                    200,
                    json!({"access_token": sts_token, "issued_token_type":
                        "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer",
                        "expires_in": 3600})
                    .to_string(),
                )
            } else {
                denied(&format!("bad STS request {form:?}"))
            }
        }
        path if path.ends_with(":generateAccessToken") => {
            let body = seen.json();
            let email = path
                .trim_start_matches("/v1/projects/-/serviceAccounts/")
                .trim_end_matches(":generateAccessToken");
            let expected_bearer = match email {
                TARGET_SA => format!("Bearer {sts_token}"),
                other => {
                    return reply(
                        404,
                        json!({"error": {"code": 404, "message": other}}).to_string(),
                    );
                }
            };
            if seen.header("authorization") != Some(expected_bearer.as_str()) {
                return reply(
                    401,
                    json!({"error": {"code": 401, "message": format!("bearer {:?}", seen.header("authorization"))}}).to_string(),
                );
            }
            if body["scope"] != json!([BIGQUERY_SCOPE]) {
                return reply(
                    400,
                    json!({"error": {"code": 400, "message": "scope"}}).to_string(),
                );
            }
            let expire = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
            reply(
                200,
                json!({"accessToken": "iam-token", "expireTime": expire}).to_string(),
            )
        }
        _ => reply(404, "{}"),
    })
}

/// The done-when of issue 8: what google-github-actions/auth writes (URL-sourced subject token,
/// `format: json`, `subject_token_field_name: value`, service account impersonation) yields
/// the IAM token at BigQuery.
#[tokio::test]
async fn a_github_actions_workload_identity_file_yields_the_impersonated_token() {
    let dir = tempfile::tempdir().unwrap();
    let google = serve(google_handler("github-oidc-jwt", "sts-token")).await;
    let bigquery = bigquery().await;
    let file = write(
        dir.path(),
        "gha-creds-1234.json",
        &json!({
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.base),
            "service_account_impersonation_url": format!(
                "{}/v1/projects/-/serviceAccounts/{TARGET_SA}:generateAccessToken", google.base),
            "credential_source": {
                "url": format!("{}/oidc?api-version=2.0&audience={}", google.base,
                    url::form_urlencoded::byte_serialize(AUDIENCE.as_bytes()).collect::<String>()),
                "headers": {"Authorization": "Bearer gh-request-token"},
                "format": {"type": "json", "subject_token_field_name": "value"}
            }
        }),
    );
    let spec = spec(&bigquery.base, Some(&file), dir.path());
    assert_eq!(
        authorization_at_bigquery(&spec, &bigquery).await,
        "Bearer iam-token"
    );
    let paths: Vec<String> = google
        .seen()
        .iter()
        .map(|seen| seen.path().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/oidc",
            "/v1/token",
            &format!("/v1/projects/-/serviceAccounts/{TARGET_SA}:generateAccessToken")
        ]
    );
    // With impersonation, STS is asked for a cloud-platform token (IAM needs it).
    assert_eq!(google.seen()[1].form()["scope"], CLOUD_PLATFORM);
}

#[tokio::test]
async fn a_file_sourced_external_account_without_impersonation_uses_the_sts_token() {
    let dir = tempfile::tempdir().unwrap();
    let google = serve(google_handler("k8s-projected-token", "sts-token")).await;
    let bigquery = bigquery().await;
    let subject = dir.path().join("token");
    std::fs::write(&subject, "k8s-projected-token\n").unwrap();
    let file = write(
        dir.path(),
        "wif.json",
        &json!({
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.base),
            "credential_source": {"file": subject.display().to_string()}
        }),
    );
    let spec = spec(&bigquery.base, Some(&file), dir.path());
    assert_eq!(
        authorization_at_bigquery(&spec, &bigquery).await,
        "Bearer sts-token"
    );
}

#[tokio::test]
async fn gcloud_impersonated_credentials_call_generate_access_token_with_the_source_token() {
    let dir = tempfile::tempdir().unwrap();
    // "user-token" plays the STS token's part in the IAM fake.
    let iam = serve(google_handler("unused", "user-token")).await;
    let tokens = serve(Arc::new(|seen: &Seen| {
        if seen.form().get("grant_type").map(String::as_str) == Some("refresh_token") {
            token("user-token")
        } else {
            denied("grant")
        }
    }))
    .await;
    let bigquery = bigquery().await;
    let file = write(
        dir.path(),
        "application_default_credentials.json",
        &json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": format!(
                "{}/v1/projects/-/serviceAccounts/{TARGET_SA}:generateAccessToken", iam.base),
            "source_credentials": {
                "type": "authorized_user",
                "client_id": "cid", "client_secret": "cs", "refresh_token": "rt",
                "token_uri": format!("{}/token", tokens.base)
            },
            "delegates": []
        }),
    );
    let spec = spec(&bigquery.base, Some(&file), dir.path());
    assert_eq!(
        authorization_at_bigquery(&spec, &bigquery).await,
        "Bearer iam-token"
    );
}

#[tokio::test]
async fn impersonate_service_account_works_on_top_of_a_service_account_key() {
    let dir = tempfile::tempdir().unwrap();
    let iam = serve(google_handler("unused", "sa-token")).await;
    let tokens = serve(Arc::new(|seen: &Seen| {
        let token_uri = format!("http://{}/token", seen.header("host").unwrap());
        match check_jwt_grant(seen, &token_uri) {
            // The source token is for IAM Credentials: cloud-platform.
            Ok(scope) if scope == CLOUD_PLATFORM => token("sa-token"),
            Ok(scope) => denied(&format!("scope {scope}")),
            Err(error) => denied(&error),
        }
    }))
    .await;
    let bigquery = bigquery().await;
    let key = write(
        dir.path(),
        "sa.json",
        &service_account_key(&format!("{}/token", tokens.base)),
    );
    let mut spec = spec(&bigquery.base, Some(&key), dir.path());
    spec.impersonate_service_account = Some(TARGET_SA.into());
    client(&spec)
        .with_iam_credentials_endpoint(&iam.base)
        .ensure_dataset(false)
        .await
        .unwrap();
    assert_eq!(
        bigquery.seen()[0].header("authorization"),
        Some("Bearer iam-token")
    );
}

#[tokio::test]
async fn the_metadata_server_is_found_at_gce_metadata_host() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = serve(Arc::new(|seen: &Seen| {
        if seen.header("metadata-flavor") != Some("Google") {
            return reply(403, "missing Metadata-Flavor: Google");
        }
        let mut answer = match seen.path() {
            "/computeMetadata/v1/" => reply(200, "instance/\nproject/\n"),
            "/computeMetadata/v1/instance/service-accounts/default/token"
                if seen.query().get("scopes").map(String::as_str) == Some(BIGQUERY_SCOPE) =>
            {
                token("metadata-token")
            }
            _ => reply(404, "{}"),
        };
        answer
            .headers
            .push(("Metadata-Flavor".into(), "Google".into()));
        answer
    }))
    .await;
    let bigquery = bigquery().await;
    let mut spec = spec(&bigquery.base, None, dir.path());
    spec.env.gce_metadata_host = Some(format!("127.0.0.1:{}", metadata.port));
    assert_eq!(
        authorization_at_bigquery(&spec, &bigquery).await,
        "Bearer metadata-token"
    );
}

#[tokio::test]
async fn only_an_emulator_gets_the_dummy_token() {
    let dir = tempfile::tempdir().unwrap();
    let bigquery = bigquery().await;
    let mut emulator = spec(&bigquery.base, None, dir.path());
    emulator.emulator = true;
    assert_eq!(
        authorization_at_bigquery(&emulator, &bigquery).await,
        "Bearer emulator-dummy-token"
    );
    // A custom endpoint that is not an emulator (regional, Private Service Connect) keeps the
    // credentials: here there are none, so the call fails before reaching BigQuery.
    let other = bigquery_fake_count_after(&spec(&bigquery.base, None, dir.path()), &bigquery).await;
    assert_eq!(other, 1, "no request without credentials");
}

async fn bigquery_fake_count_after(spec: &BigQuerySpec, bigquery: &Fake) -> usize {
    let error = client(spec).ensure_dataset(false).await.unwrap_err();
    assert!(
        error.to_string().contains("no Google credentials found"),
        "{error}"
    );
    bigquery.seen().len()
}

#[tokio::test]
async fn no_credentials_lists_what_was_tried_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        "https://bigquery.europe-west3.rep.googleapis.com",
        None,
        dir.path(),
    );
    let error = client(&spec)
        .ensure_dataset(false)
        .await
        .unwrap_err()
        .to_string();
    let adc = dir
        .path()
        .join(".config/gcloud/application_default_credentials.json");
    for expected in [
        "no Google credentials found; tried, in order:",
        "1. a credentials file: `bigquery.credentials` and GOOGLE_APPLICATION_CREDENTIALS are not set",
        &format!(
            "2. gcloud's application-default credentials: {} does not exist",
            adc.display()
        ),
        "3. the metadata server (GCE, GKE, Cloud Run) at 127.0.0.1:1: unreachable",
        "gcloud auth application-default login",
        "workload identity federation",
        "if https://bigquery.europe-west3.rep.googleapis.com is an emulator, set `bigquery.emulator: true`",
    ] {
        assert!(
            error.contains(expected),
            "missing {expected:?} in:\n{error}"
        );
    }
}

#[tokio::test]
async fn a_403_names_the_principal_and_the_permission() {
    let dir = tempfile::tempdir().unwrap();
    let google = serve(Arc::new(|_: &Seen| token("sa-token"))).await;
    let bigquery = serve(Arc::new(|_: &Seen| {
        reply(403, json!({"error": {"code": 403,
            "message": "Access Denied: Dataset p:d: Permission bigquery.datasets.get denied on dataset p:d (or it may not exist).",
            "errors": [{"reason": "accessDenied", "message": "Access Denied"}], "status": "PERMISSION_DENIED"}}).to_string())
    }))
    .await;
    let key = write(
        dir.path(),
        "sa.json",
        &service_account_key(&format!("{}/token", google.base)),
    );
    let error = client(&spec(&bigquery.base, Some(&key), dir.path()))
        .ensure_dataset(false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "service account {SA_EMAIL} lacks the permission `bigquery.datasets.get`"
        )),
        "{error}"
    );
    assert!(error.contains("roles/bigquery"), "{error}");
}

#[tokio::test]
async fn a_refused_token_request_names_the_principal_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let google = serve(Arc::new(|_: &Seen| {
        reply(
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        )
    }))
    .await;
    let bigquery = bigquery().await;
    let file = write(
        dir.path(),
        "adc.json",
        &json!({"type": "authorized_user",
        "client_id": "c", "client_secret": "s", "refresh_token": "r", "account": "dev@example.com",
        "token_uri": format!("{}/token", google.base)}),
    );
    let error = client(&spec(&bigquery.base, Some(&file), dir.path()))
        .ensure_dataset(false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("user credentials of dev@example.com"),
        "{error}"
    );
    assert!(
        error.contains("invalid_grant: Token has been expired or revoked."),
        "{error}"
    );
    assert!(bigquery.seen().is_empty());
}

/// Item 4: behind a proxy-only egress with a TLS-inspecting proxy's CA, both the token request
/// and the BigQuery calls go through the CONNECT proxy and trust the custom CA.
#[tokio::test]
async fn the_proxy_and_the_custom_ca_apply_to_the_token_and_the_api_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_path = dir.path().join("corp-ca.pem");
    std::fs::write(&ca_path, &ca.ca_pem).unwrap();
    let google = serve_tls(
        Arc::new(|seen: &Seen| {
            let token_uri = format!("https://{}/token", seen.header("host").unwrap());
            match check_jwt_grant(seen, &token_uri) {
                Ok(_) => token("sa-token"),
                Err(error) => denied(&error),
            }
        }),
        &ca,
    )
    .await;
    let bigquery = serve_tls(bigquery_handler(), &ca).await;
    let proxy = crate::support::fakes::connect_proxy().await;
    let key = write(
        dir.path(),
        "sa.json",
        &service_account_key(&format!("{}/token", google.base)),
    );

    // SSL_CERT_FILE, and the manifest's `ca_file`.
    for use_manifest_option in [false, true] {
        let mut spec = spec(&bigquery.base, Some(&key), dir.path());
        spec.env.https_proxy = Some(proxy.url.clone());
        if use_manifest_option {
            spec.ca_file = Some(ca_path.display().to_string());
        } else {
            spec.env.ssl_cert_file = Some(ca_path.display().to_string());
        }
        client(&spec).ensure_dataset(false).await.unwrap();
    }
    let targets = proxy.targets();
    for fake in [&google, &bigquery] {
        assert!(
            targets.contains(&format!("127.0.0.1:{}", fake.port)),
            "no CONNECT to {} in {targets:?}",
            fake.base
        );
    }
    assert_eq!(
        bigquery.seen()[0].header("authorization"),
        Some("Bearer sa-token")
    );

    // Without the CA the TLS handshake fails (webpki roots only).
    let mut no_ca = spec(&bigquery.base, Some(&key), dir.path());
    no_ca.env.https_proxy = Some(proxy.url.clone());
    let error = client(&no_ca)
        .ensure_dataset(false)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    // NO_PROXY bypasses the proxy.
    let before = proxy.targets().len();
    let mut direct = spec(&bigquery.base, Some(&key), dir.path());
    direct.env.https_proxy = Some(proxy.url.clone());
    direct.env.no_proxy = Some("127.0.0.1".into());
    direct.ca_file = Some(ca_path.display().to_string());
    client(&direct).ensure_dataset(false).await.unwrap();
    assert_eq!(proxy.targets().len(), before);
}
