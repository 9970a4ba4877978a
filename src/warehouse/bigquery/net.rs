//! One HTTP client configuration for the BigQuery API and every token endpoint: proxies
//! (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, upper or lower case) and an extra CA bundle
//! (`bigquery.ca_file`, else `SSL_CERT_FILE`), both taken from the manifest's environment
//! snapshot, never from the process environment.

use std::time::Duration;

use crate::manifest::resolve::BigQuerySpec;
use crate::warehouse::WarehouseError;

/// Proxies and trust roots, read once from the spec.
#[derive(Clone)]
pub(super) struct Network {
    https_proxy: Option<String>,
    http_proxy: Option<String>,
    no_proxy: Option<String>,
    /// Extra trusted CA certificates (PEM), on top of the built-in roots.
    roots: Vec<reqwest::Certificate>,
}

impl Network {
    /// Reads the CA bundle (a bad file is an error, not an ignored setting).
    pub(super) fn from_spec(spec: &BigQuerySpec) -> Result<Self, WarehouseError> {
        let ca_file = spec
            .ca_file
            .as_deref()
            .map(|path| (path, "bigquery.ca_file"))
            .or_else(|| {
                spec.env
                    .ssl_cert_file
                    .as_deref()
                    .map(|path| (path, "SSL_CERT_FILE"))
            });
        let roots = match ca_file {
            None => Vec::new(),
            Some((path, origin)) => {
                let pem = std::fs::read(path).map_err(|error| {
                    WarehouseError::Invalid(format!(
                        "cannot read the CA bundle {path} ({origin}): {error}"
                    ))
                })?;
                let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                    WarehouseError::Invalid(format!(
                        "the CA bundle {path} ({origin}) is not PEM certificates: {error}"
                    ))
                })?;
                if roots.is_empty() {
                    return Err(WarehouseError::Invalid(format!(
                        "the CA bundle {path} ({origin}) holds no certificate"
                    )));
                }
                roots
            }
        };
        Ok(Self {
            https_proxy: spec.env.https_proxy.clone(),
            http_proxy: spec.env.http_proxy.clone(),
            no_proxy: spec.env.no_proxy.clone(),
            roots,
        })
    }

    /// A client with this network configuration. `proxied: false` for the metadata server,
    /// which is link-local and never behind a proxy (as in Google's own clients).
    pub(super) fn client(
        &self,
        proxied: bool,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<reqwest::Client, WarehouseError> {
        let invalid = |what: &str, error: reqwest::Error| {
            WarehouseError::Invalid(format!("{what}: {}", error.without_url()))
        };
        // `no_proxy()` first: reqwest would otherwise read the process environment itself.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            // A server that stops sending mid-answer; each request also has its own total
            // timeout (`RetryPolicy::request_timeout`) under `timeout`.
            .read_timeout(Duration::from_secs(120).min(timeout))
            .timeout(timeout);
        if proxied {
            let no_proxy = self
                .no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string);
            if let Some(url) = &self.https_proxy {
                let proxy = reqwest::Proxy::https(proxy_url(url))
                    .map_err(|error| invalid("bad HTTPS_PROXY", error))?
                    .no_proxy(no_proxy.clone());
                builder = builder.proxy(proxy);
            }
            if let Some(url) = &self.http_proxy {
                let proxy = reqwest::Proxy::http(proxy_url(url))
                    .map_err(|error| invalid("bad HTTP_PROXY", error))?
                    .no_proxy(no_proxy);
                builder = builder.proxy(proxy);
            }
        }
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        builder
            .build()
            .map_err(|error| invalid("cannot build the HTTP client", error))
    }
}

/// `host:port` means `http://host:port`, as curl reads it.
fn proxy_url(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}
