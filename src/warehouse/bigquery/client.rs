//! HTTP: one request with retries, JSON bodies, transport errors.

use std::time::Instant;

use reqwest::{Method, Url};
use serde_json::Value;

use super::model::error_from_body;
use super::retry::{is_retryable, jitter, parse_retry_after};
use super::{BigQuery, Reply};
use crate::warehouse::WarehouseError;

impl BigQuery {
    /// One HTTP exchange without retries. Transport failures become [`WarehouseError::Transport`].
    pub(super) async fn exchange(
        &self,
        context: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, WarehouseError> {
        let token = self.token().await?;
        // At debug level, one line per HTTP request (`bench/plan_many.sh` counts them).
        tracing::debug!(context, "BigQuery request");
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|error| transport(context, error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|error| transport(context, error))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// A JSON call with retries on transport errors, 429, 5xx and retryable reasons.
    /// Non-2xx answers become [`WarehouseError::Api`].
    pub(super) async fn send(
        &self,
        context: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Reply, WarehouseError> {
        self.send_if_match(context, method, url, body, None).await
    }

    /// [`BigQuery::send`] with an `If-Match` etag (optimistic concurrency on tables.patch: the
    /// update "will only succeed if the table on the server has the same ETag", HTTP 412
    /// otherwise).
    pub(super) async fn send_if_match(
        &self,
        context: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, WarehouseError> {
        let deadline = Instant::now() + self.retry.call_deadline;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .timeout(self.retry.request_timeout_until(deadline));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(etag) = if_match {
                request = request.header(reqwest::header::IF_MATCH, etag);
            }
            let (error, retry_after) = match self.exchange(context, request).await {
                Ok(reply) if reply.status.is_success() => return Ok(reply),
                Ok(reply) => {
                    let (reason, message) = error_from_body(&reply.body);
                    let retry_after = parse_retry_after(
                        reply
                            .headers
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok()),
                    );
                    let status = reply.status.as_u16();
                    let error = WarehouseError::Api {
                        context: context.to_string(),
                        status,
                        reason,
                        message,
                    };
                    if !is_retryable(status, error.reason().unwrap_or_default()) {
                        return Err(self.explain_auth_error(error));
                    }
                    (error, retry_after)
                }
                Err(error) if error.retryable() => (error, None),
                Err(error) => return Err(error),
            };
            if !self.retry.should_retry(attempt) {
                return Err(error);
            }
            let delay = self.retry.delay(attempt, retry_after, jitter());
            if Instant::now() + delay >= deadline {
                return Err(WarehouseError::Deadline {
                    context: context.to_string(),
                    message: format!(
                        "no answer within {} ({attempt} attempts); last error: {error}",
                        humantime::format_duration(self.retry.call_deadline)
                    ),
                });
            }
            tracing::debug!(%error, attempt, ?delay, "retrying BigQuery call");
            tokio::time::sleep(delay).await;
        }
    }

    pub(super) async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        context: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T, WarehouseError> {
        let reply = self.send(context, method, url, body).await?;
        parse_json(context, &reply.body)
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    context: &str,
    body: &[u8],
) -> Result<T, WarehouseError> {
    serde_json::from_slice(body).map_err(|error| WarehouseError::Protocol {
        context: context.to_string(),
        message: format!("cannot decode the response: {error}"),
    })
}

/// A transport error without the URL (upload session URLs are capabilities). Only a failure to
/// connect is known to have sent nothing; any other (a timeout, a reset) may have lost the reply
/// to a request the server carried out.
pub(super) fn transport(context: &str, error: reqwest::Error) -> WarehouseError {
    let maybe_sent = !error.is_connect();
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    WarehouseError::Transport {
        context: context.to_string(),
        message,
        maybe_sent,
    }
}
