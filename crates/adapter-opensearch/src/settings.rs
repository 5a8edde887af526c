//! What an operator tells the OpenSearch backend.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the OpenSearch backend (`storage.opensearch.*`, `CM_STORAGE__OPENSEARCH__*`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenSearchSettings {
    /// The node (or load balancer) to talk to: `http://host:9200` or `https://host:9200`.
    pub url: String,
    /// Basic-authentication user (the security plugin's internal users, e.g. `admin`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Accept any certificate (self-signed demo certificates). Never in production.
    pub insecure_tls: bool,
    /// The orders stream; the index template covers `<orders_index>*`.
    pub orders_index: String,
    /// The agents registry group expansion reads (`agent.id`, `agent.groups`).
    pub agents_index: String,
    /// Where retention moves finished orders when archiving is on.
    pub archive_index: String,
    /// The registry of server components (their names and key hashes). Not under
    /// `<orders_index>*`, which the orders template covers.
    pub servers_index: String,
    /// The request records (one per command of a submit, docs/requests.md), which claims
    /// consult. It has an index template of its own, which wins over the orders template even
    /// where its name starts with the orders index's (as the default does).
    pub requests_index: String,
    /// How often this instance looks in the index for orders its waiting long-polls may claim
    /// (one refresh and one search per interval for all of them), in milliseconds: the delay
    /// within which an order created through another service instance reaches a waiting agent.
    /// Also the most a claim's view of the index may lag behind other instances' writes.
    pub poll_interval_ms: u64,
    /// Longest one request to OpenSearch may take, in seconds.
    pub request_timeout_secs: u64,
    /// Most requests in flight to the cluster at once (and so most connections held open);
    /// more wait for a free one. Bounds the service's memory and the load it puts on the
    /// cluster when thousands of polls claim at once.
    pub max_connections: u32,
}

impl Default for OpenSearchSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".to_owned(),
            username: None,
            password: None,
            insecure_tls: false,
            orders_index: "wazuh-commands".to_owned(),
            agents_index: "wazuh-agents".to_owned(),
            archive_index: "wazuh-commands-archive".to_owned(),
            servers_index: "wazuh-servers".to_owned(),
            requests_index: "wazuh-commands-requests".to_owned(),
            poll_interval_ms: 1000,
            request_timeout_secs: 30,
            max_connections: 32,
        }
    }
}

impl fmt::Debug for OpenSearchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenSearchSettings")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("insecure_tls", &self.insecure_tls)
            .field("orders_index", &self.orders_index)
            .field("agents_index", &self.agents_index)
            .field("archive_index", &self.archive_index)
            .field("servers_index", &self.servers_index)
            .field("requests_index", &self.requests_index)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl OpenSearchSettings {
    /// Checks every setting; the message names the key (`storage.opensearch.<key>`).
    ///
    /// # Errors
    /// The first setting that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let key = |k: &str| format!("storage.opensearch.{k}");
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "{}: must be an http:// or https:// URL, not {:?}",
                key("url"),
                redact_url(&self.url)
            ));
        }
        for (name, value) in [
            ("orders_index", &self.orders_index),
            ("agents_index", &self.agents_index),
            ("archive_index", &self.archive_index),
            ("servers_index", &self.servers_index),
            ("requests_index", &self.requests_index),
        ] {
            check_index_name(value).map_err(|why| format!("{}: {why}", key(name)))?;
        }
        if self.agents_index == self.orders_index
            || self.agents_index == self.archive_index
            || self.orders_index == self.archive_index
        {
            return Err(format!(
                "{}, {} and {} must be three different indices",
                key("orders_index"),
                key("agents_index"),
                key("archive_index")
            ));
        }
        for name in ["agents_index", "servers_index"] {
            let index = if name == "agents_index" {
                &self.agents_index
            } else {
                &self.servers_index
            };
            if index.starts_with(&self.orders_index) {
                return Err(format!(
                    "{}: must not start with the orders index name ({:?}): the orders template \
                     (`{}*`) would apply to it",
                    key(name),
                    self.orders_index,
                    self.orders_index
                ));
            }
        }
        if [&self.orders_index, &self.agents_index, &self.archive_index]
            .contains(&&self.servers_index)
        {
            return Err(format!(
                "{}: must differ from the orders, agents and archive indices",
                key("servers_index")
            ));
        }
        if [
            &self.orders_index,
            &self.agents_index,
            &self.archive_index,
            &self.servers_index,
        ]
        .contains(&&self.requests_index)
        {
            return Err(format!(
                "{}: must differ from the orders, agents, archive and servers indices",
                key("requests_index")
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(format!("{}: must be at least 1", key("poll_interval_ms")));
        }
        if self.request_timeout_secs == 0 {
            return Err(format!(
                "{}: must be at least 1",
                key("request_timeout_secs")
            ));
        }
        if self.max_connections == 0 {
            return Err(format!("{}: must be at least 1", key("max_connections")));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(format!("{}: a password needs a username", key("username")));
        }
        Ok(())
    }

    /// [`Self::poll_interval_ms`] as a duration.
    #[must_use]
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(1))
    }
}

/// OpenSearch's rules for index names: lowercase, none of `\ / * ? " < > | , #` or spaces, not
/// starting with `-`, `_` or `+`, not `.` or `..`, at most 255 bytes.
fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 255 {
        return Err("must be at most 255 bytes".to_owned());
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..".to_owned());
    }
    if name.starts_with(['-', '_', '+']) {
        return Err("must not start with -, _ or +".to_owned());
    }
    if name.chars().any(|c| {
        c.is_uppercase()
            || c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
            )
    }) {
        return Err(format!(
            "{name:?} is not a valid index name (lowercase, without \\ / * ? \" < > | , # : or spaces)"
        ));
    }
    Ok(())
}

/// `url` with the password of its user-info part replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let s = OpenSearchSettings {
            url: "https://admin:urlsecret@os.example:9200".into(),
            username: Some("admin".into()),
            password: Some("s3cret".into()),
            ..OpenSearchSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("urlsecret"), "{shown}");
        assert!(
            shown.contains("https://admin:***@os.example:9200"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_are_the_wazuh_indices_on_a_local_node() {
        let s = OpenSearchSettings::default();
        assert_eq!(s.url, "http://127.0.0.1:9200");
        assert_eq!(
            (
                s.orders_index.as_str(),
                s.agents_index.as_str(),
                s.archive_index.as_str()
            ),
            ("wazuh-commands", "wazuh-agents", "wazuh-commands-archive")
        );
        assert_eq!(s.requests_index, "wazuh-commands-requests");
        assert_eq!((s.poll_interval_ms, s.request_timeout_secs), (1000, 30));
        assert!(!s.insecure_tls);
        assert_eq!(s.validate(), Ok(()));
    }

    type Change = fn(&mut OpenSearchSettings);

    #[test]
    fn bad_settings_name_their_key() {
        let cases: [(&str, Change); 8] = [
            ("storage.opensearch.url", |s| {
                s.url = "localhost:9200".into()
            }),
            ("storage.opensearch.orders_index", |s| {
                s.orders_index = "Wazuh-Commands".into();
            }),
            ("storage.opensearch.agents_index", |s| {
                s.agents_index = "_agents".into();
            }),
            ("storage.opensearch.archive_index", |s| {
                s.archive_index = "a*b".into();
            }),
            ("storage.opensearch.poll_interval_ms", |s| {
                s.poll_interval_ms = 0;
            }),
            ("storage.opensearch.agents_index", |s| {
                s.agents_index = "wazuh-commands-agents".into();
            }),
            ("storage.opensearch.requests_index", |s| {
                s.requests_index = "Requests".into();
            }),
            ("storage.opensearch.requests_index", |s| {
                s.requests_index = s.archive_index.clone();
            }),
        ];
        for (key, change) in cases {
            let mut s = OpenSearchSettings::default();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }
}
