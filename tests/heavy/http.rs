//! What the heavy tests share: an HTTP client that keeps status, `Retry-After` and timing, a
//! small random number generator, and Prometheus counter sums.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<String>,
    pub(crate) took: Duration,
}

/// A JSON client whose failures (connection errors, its own timeout) are values.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client that gives up on a request after `timeout` (a hang, for the tests).
    pub(crate) fn new(timeout: Duration) -> Self {
        // ring, the workspace's one TLS crypto provider: a client panics without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
        }
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let started = Instant::now();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method.clone(), url);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e} (after {:?})", started.elapsed()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            body,
            retry_after,
            took: started.elapsed(),
        })
    }

    pub(crate) async fn get(&self, url: &str) -> Result<Answer, String> {
        self.call("GET", url, None).await
    }

    pub(crate) async fn post(&self, url: &str, body: &Value) -> Result<Answer, String> {
        self.call("POST", url, Some(body)).await
    }

    pub(crate) async fn put(&self, url: &str, body: &Value) -> Result<Answer, String> {
        self.call("PUT", url, Some(body)).await
    }
}

/// splitmix64: small, seedable, good enough to pick instances and agents.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the clock (printed by the tests, to replay a run).
    pub(crate) fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The sum of the counter `name` over the series whose labels include every `labels` pair, in
/// a Prometheus text page.
pub(crate) fn counter_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A single-agent command.
pub(crate) fn command(agent: &str, timeout: u64, label: &str) -> Value {
    serde_json::json!({
        "source": "Users/Services",
        "user": "heavy",
        "target": {"type": "agent", "id": agent},
        "action": {"name": "restart", "args": {"test": label}, "version": "v5"},
        "timeout": timeout
    })
}

/// The order ids of a submit answer, in the order of its commands.
pub(crate) fn order_ids(body: &Value) -> Vec<String> {
    body["requests"]
        .as_array()
        .map(|requests| {
            requests
                .iter()
                .flat_map(|r| r["order_ids"].as_array().cloned().unwrap_or_default())
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
