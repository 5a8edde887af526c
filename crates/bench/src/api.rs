//! The service's HTTP API as the benchmarks use it: a manager submitting and reading, agents
//! registering, polling and reporting, a relay claiming and reporting for many agents.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The page size of order listings (the API's maximum).
const PAGE: usize = 1000;

/// A client of one service instance.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
}

/// A plain HTTP/1.1 client: no proxy, no TLS, `TCP_NODELAY`, optionally from a given local
/// address (to spread many connections over several loopback source addresses).
pub(crate) fn client(local: Option<IpAddr>, timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(timeout)
        .pool_max_idle_per_host(256)
        .local_address(local)
        .build()
        .context("cannot build an HTTP client")
}

/// What a submit answered: per command, its request id and order ids.
#[derive(Debug, Clone)]
pub(crate) struct Submitted {
    pub(crate) request_id: String,
    pub(crate) order_ids: Vec<String>,
}

/// One command of a submit body.
pub(crate) fn command(target_type: &str, target_id: &str, timeout_secs: u32) -> Value {
    json!({
        "source": "Users/Services",
        "user": "bench",
        "target": {"type": target_type, "id": target_id},
        "action": {"name": "restart", "args": {}, "version": "v5"},
        "timeout": timeout_secs,
    })
}

/// The body of a relay's claim for `agents`, serialised once (10,000 ids make 140 KB).
pub(crate) fn relay_claim_body(agents: &[String], limit: u32, wait_secs: u64) -> String {
    json!({"agents": agents, "limit": limit, "wait": wait_secs}).to_string()
}

impl Api {
    pub(crate) fn new(base: &str) -> Result<Self> {
        Ok(Self::with_client(
            base,
            client(None, Duration::from_secs(900))?,
        ))
    }

    pub(crate) fn with_client(base: &str, http: reqwest::Client) -> Self {
        Self {
            http,
            base: base.to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn expect_json(resp: reqwest::Response, what: &str) -> Result<Value> {
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("{what}: body"))?;
        if !status.is_success() {
            bail!("{what}: HTTP {status}: {}", truncate(&text));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{what}: not JSON: {}", truncate(&text)))
    }

    /// `GET path`: the answer's JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Result<Value> {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Self::expect_json(resp, path).await
    }

    /// `PUT /api/v1/agents`: registers up to 10,000 agents in one call.
    pub(crate) async fn put_agents(&self, agents: &[(String, Vec<String>)]) -> Result<()> {
        let body: Vec<Value> = agents
            .iter()
            .map(|(id, groups)| json!({"id": id, "groups": groups}))
            .collect();
        let resp = self
            .http
            .put(self.url("/api/v1/agents"))
            .json(&json!({ "agents": body }))
            .send()
            .await
            .context("register agents in bulk")?;
        Self::expect_json(resp, "register agents in bulk")
            .await
            .map(drop)
    }

    /// `POST /api/v1/commands` with one command; answers its request id and order ids.
    pub(crate) async fn submit(&self, command: &Value) -> Result<Submitted> {
        let resp = self
            .http
            .post(self.url("/api/v1/commands"))
            .json(&json!({ "commands": [command] }))
            .send()
            .await
            .context("submit")?;
        let body = Self::expect_json(resp, "submit").await?;
        let request = &body["requests"][0];
        let request_id = request["request_id"]
            .as_str()
            .context("submit: no request_id")?
            .to_owned();
        let order_ids = request["order_ids"]
            .as_array()
            .context("submit: no order_ids")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        Ok(Submitted {
            request_id,
            order_ids,
        })
    }

    /// `POST /api/v1/agents/{id}/poll?wait=&limit=`: the orders handed out.
    pub(crate) async fn poll(&self, agent: &str, wait_secs: u64, limit: u32) -> Result<Vec<Value>> {
        let resp = self
            .http
            .post(self.url(&format!(
                "/api/v1/agents/{agent}/poll?wait={wait_secs}&limit={limit}"
            )))
            .send()
            .await
            .with_context(|| format!("poll of {agent}"))?;
        let mut body = Self::expect_json(resp, "poll").await?;
        match body["orders"].take() {
            Value::Array(orders) => Ok(orders),
            other => bail!("poll: no orders in {other}"),
        }
    }

    /// `POST /api/v1/orders/{id}/result` with a success.
    pub(crate) async fn report_success(&self, order_id: &str) -> Result<()> {
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/orders/{order_id}/result")))
            .json(&json!({"status": "success", "code": 0, "message": "done", "data": ""}))
            .send()
            .await
            .context("report")?;
        Self::expect_json(resp, "report").await.map(drop)
    }

    /// `POST /api/v1/relay/claim` with a body made once by [`relay_claim_body`]: the orders
    /// handed out. The benchmark's service runs on loopback without authentication, so no
    /// relay token is sent.
    pub(crate) async fn relay_claim(&self, body: &str) -> Result<Vec<Value>> {
        let resp = self
            .http
            .post(self.url("/api/v1/relay/claim"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await
            .context("relay claim")?;
        let mut body = Self::expect_json(resp, "relay claim").await?;
        match body["orders"].take() {
            Value::Array(orders) => Ok(orders),
            other => bail!("relay claim: no orders in {other}"),
        }
    }

    /// `POST /api/v1/results` with a success for each of `order_ids` (at most 1,000); fails
    /// unless every one is `applied` (or was `already_applied`).
    pub(crate) async fn report_successes(&self, order_ids: &[String]) -> Result<()> {
        let results: Vec<Value> = order_ids
            .iter()
            .map(|id| {
                json!({"order_id": id, "status": "success", "code": 0, "message": "done", "data": ""})
            })
            .collect();
        let resp = self
            .http
            .post(self.url("/api/v1/results"))
            .json(&json!({ "results": results }))
            .send()
            .await
            .context("report results")?;
        let body = Self::expect_json(resp, "report results").await?;
        let outcomes = body["results"]
            .as_array()
            .context("report results: no results")?;
        if outcomes.len() != order_ids.len() {
            bail!(
                "report results: {} outcomes for {} results",
                outcomes.len(),
                order_ids.len()
            );
        }
        if let Some(bad) = outcomes
            .iter()
            .find(|o| !matches!(o["outcome"].as_str(), Some("applied" | "already_applied")))
        {
            bail!("report results: {bad}");
        }
        Ok(())
    }

    /// `GET /api/v1/requests/{id}`: `(total, pending, success, failure)`.
    pub(crate) async fn progress(&self, request_id: &str) -> Result<Progress> {
        let resp = self
            .http
            .get(self.url(&format!("/api/v1/requests/{request_id}")))
            .send()
            .await
            .context("progress")?;
        let body = Self::expect_json(resp, "request progress").await?;
        let n = |k: &str| body[k].as_u64().unwrap_or(0);
        Ok(Progress {
            total: n("total"),
            pending: n("pending"),
            success: n("success"),
            failure: n("failure"),
        })
    }

    /// Every order of one request, read page by page.
    pub(crate) async fn orders_of_request(&self, request_id: &str) -> Result<Vec<Value>> {
        let mut orders = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = self
                .http
                .get(self.url("/api/v1/orders"))
                .query(&[("request_id", request_id), ("size", &PAGE.to_string())]);
            if let Some(cursor) = &after {
                req = req.query(&[("after", cursor)]);
            }
            let mut body =
                Self::expect_json(req.send().await.context("list orders")?, "list orders").await?;
            match body["orders"].take() {
                Value::Array(page) => orders.extend(page),
                other => bail!("list orders: no orders in {other}"),
            }
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(orders),
            }
        }
    }

    /// Pages through the agents of `group` (`GET /api/v1/agents?group=&size=1000`), as the
    /// fan-out's expansion reads the registry; answers how many there are.
    pub(crate) async fn count_group(&self, group: &str) -> Result<u64> {
        let mut n = 0;
        let mut after: Option<String> = None;
        loop {
            let mut req = self
                .http
                .get(self.url("/api/v1/agents"))
                .query(&[("group", group), ("size", &PAGE.to_string())]);
            if let Some(cursor) = &after {
                req = req.query(&[("after", cursor)]);
            }
            let body =
                Self::expect_json(req.send().await.context("list agents")?, "list agents").await?;
            n += body["agents"].as_array().map_or(0, Vec::len) as u64;
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(n),
            }
        }
    }

    /// The value of one sample of `/metrics` (the sum over its label sets), if present.
    pub(crate) async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .context("metrics")?
            .text()
            .await?;
        Ok(metric_value(&text, name))
    }
}

/// A request's progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) total: u64,
    pub(crate) pending: u64,
    pub(crate) success: u64,
    pub(crate) failure: u64,
}

/// The sum of every sample of `name` in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn truncate(text: &str) -> &str {
    let end = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn metric_samples_are_summed_over_labels_and_other_names_ignored() {
        let text = "# HELP cm_long_polls_open open\n# TYPE cm_long_polls_open gauge\n\
                    cm_long_polls_open 12\ncm_long_polls_open_total 5\n\
                    x{a=\"1\"} 2\nx{a=\"2\"} 3.5\n";
        assert_eq!(metric_value(text, "cm_long_polls_open"), Some(12.0));
        assert_eq!(metric_value(text, "x"), Some(5.5));
        assert_eq!(metric_value(text, "missing"), None);
    }
}
