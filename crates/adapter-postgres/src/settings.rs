//! What an operator tells the PostgreSQL backend.

use std::fmt;

use serde::Deserialize;

/// Settings of the PostgreSQL backend (`storage.postgres.*`, `CM_STORAGE__POSTGRES__*`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database?options`.
    pub url: String,
    /// Most connections the service holds open for queries (the notification listener has one
    /// more of its own).
    pub max_connections: u32,
    /// How long to wait for a connection, in seconds (connecting, or waiting for a free one
    /// in the pool).
    pub connect_timeout_secs: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: "postgres://localhost/command_manager".to_owned(),
            max_connections: 10,
            connect_timeout_secs: 5,
        }
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .finish()
    }
}

/// `url` with the password (in the user-info part or a `password=` option) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => authority.to_owned(),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let options: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&options.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let s = PostgresSettings {
            url: "postgres://cm:s3cret@db.example:5432/cm?sslmode=require&password=other".into(),
            ..PostgresSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert!(
            shown.contains("postgres://cm:***@db.example:5432/cm?sslmode=require&password=***"),
            "{shown}"
        );
    }

    #[test]
    fn urls_without_a_password_are_shown_as_they_are() {
        for url in [
            "postgres://localhost/command_manager",
            "postgres://cm@localhost:5433/x",
            "postgresql:///cm?host=/run/postgresql",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn defaults_point_at_a_local_database() {
        let s = PostgresSettings::default();
        assert_eq!(s.url, "postgres://localhost/command_manager");
        assert_eq!((s.max_connections, s.connect_timeout_secs), (10, 5));
    }
}
