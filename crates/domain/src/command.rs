//! A command request as a client submits it, validated.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::FieldError;
use crate::ids::{AgentId, ComponentName, GroupName};
use crate::request::RateControl;
use crate::schedule::Schedule;

/// Longest value of a free-text keyword field (the Wazuh mapping's `ignore_above`).
pub const MAX_KEYWORD_LEN: usize = 1024;

/// The rule of [`check_text`] for an optional keyword, as a regular expression (the ECMA-262
/// subset JSON Schema uses), with [`MAX_KEYWORD_LEN`] as the length bound: no control
/// character (Unicode category Cc).
pub const KEYWORD_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// The rule of [`check_text`] for a required keyword: [`KEYWORD_PATTERN`], and at least one
/// character that is not white space (Unicode `White_Space`, what `str::trim` removes).
pub const REQUIRED_KEYWORD_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";

/// Who originated a command. Matched case-insensitively; stored in its canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    UsersServices,
    Engine,
    ContentManager,
}

impl Source {
    pub const ALL: [Self; 3] = [Self::UsersServices, Self::Engine, Self::ContentManager];

    /// # Errors
    /// A [`FieldError`] on `source` naming the accepted values.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw))
            .ok_or_else(|| {
                FieldError::new(
                    "source",
                    "must be one of Users/Services, Engine, Content manager",
                )
            })
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UsersServices => "Users/Services",
            Self::Engine => "Engine",
            Self::ContentManager => "Content manager",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// What kind of thing a command is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    Agent,
    Group,
    Server,
}

impl TargetType {
    pub const ALL: [Self; 3] = [Self::Agent, Self::Group, Self::Server];

    /// Matched case-insensitively, like [`Source::parse`].
    ///
    /// # Errors
    /// A [`FieldError`] on `target.type` naming the accepted values.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        match raw.to_ascii_lowercase().as_str() {
            "agent" => Ok(Self::Agent),
            "group" => Ok(Self::Group),
            "server" => Ok(Self::Server),
            _ => Err(FieldError::new(
                "target.type",
                "must be one of agent, group, server",
            )),
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Group => "group",
            Self::Server => "server",
        }
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a command is aimed at; the id is a valid [`AgentId`], [`GroupName`] or
/// [`ComponentName`] according to the type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    #[serde(rename = "type")]
    kind: TargetType,
    id: String,
}

impl Target {
    /// # Errors
    /// A [`FieldError`] on `target.id` when the id does not fit the target type.
    pub fn new(kind: TargetType, id: &str) -> Result<Self, FieldError> {
        match kind {
            TargetType::Agent => {
                AgentId::parse(id, "target.id")?;
            }
            TargetType::Group => {
                GroupName::parse(id, "target.id")?;
            }
            TargetType::Server => {
                ComponentName::parse(id, "target.id")?;
            }
        }
        Ok(Self {
            kind,
            id: id.to_owned(),
        })
    }

    /// The target of one order delivered to `agent`.
    #[must_use]
    pub fn agent(agent: &AgentId) -> Self {
        Self {
            kind: TargetType::Agent,
            id: agent.as_str().to_owned(),
        }
    }

    #[must_use]
    pub const fn kind(&self) -> TargetType {
        self.kind
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The action an agent or server component is asked to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    name: String,
    args: Value,
    version: String,
}

impl Action {
    /// `args` is kept verbatim; it must be a JSON object or array (possibly empty).
    ///
    /// # Errors
    /// A [`FieldError`] on `action.name`, `action.args` or `action.version`.
    pub fn new(name: &str, args: Value, version: &str) -> Result<Self, FieldError> {
        check_text(name, "action.name", true)?;
        check_text(version, "action.version", false)?;
        if !(args.is_object() || args.is_array()) {
            return Err(FieldError::new(
                "action.args",
                "must be a JSON object or array",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            args,
            version: version.to_owned(),
        })
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub const fn args(&self) -> &Value {
        &self.args
    }

    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The window, in seconds, in which an order must be delivered: 1..=32767 (a `short`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Timeout(u16);

impl Timeout {
    pub const MAX: u16 = 32767;

    /// # Errors
    /// A [`FieldError`] on `timeout` when `secs` is outside 1..=32767.
    pub fn new(secs: i64) -> Result<Self, FieldError> {
        u16::try_from(secs)
            .ok()
            .filter(|s| (1..=Self::MAX).contains(s))
            .map(Self)
            .ok_or_else(|| {
                FieldError::new("timeout", "must be an integer from 1 to 32767 (seconds)")
            })
    }

    #[must_use]
    pub const fn secs(self) -> u16 {
        self.0
    }

    #[must_use]
    pub fn duration(self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.0))
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = i64::deserialize(d)?;
        Self::new(secs).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// One validated command of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    source: Source,
    user: Option<String>,
    target: Target,
    action: Action,
    timeout: Timeout,
    schedule: Schedule,
    rate_control: Option<RateControl>,
}

impl Command {
    /// # Errors
    /// A [`FieldError`] on `user` when it is longer than a keyword field holds.
    pub fn new(
        source: Source,
        user: Option<String>,
        target: Target,
        action: Action,
        timeout: Timeout,
    ) -> Result<Self, FieldError> {
        if let Some(user) = &user {
            check_text(user, "user", false)?;
        }
        Ok(Self {
            source,
            user,
            target,
            action,
            timeout,
            schedule: Schedule::default(),
            rate_control: None,
        })
    }

    /// The command with a start time and rollout window (docs/rollout.md); without one its orders
    /// may be handed out at once.
    #[must_use]
    pub const fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The command with rate control (docs/rollout.md): a cap on orders out at once and an
    /// error budget.
    #[must_use]
    pub const fn with_rate_control(mut self, rate_control: RateControl) -> Self {
        self.rate_control = Some(rate_control);
        self
    }

    #[must_use]
    pub const fn rate_control(&self) -> Option<RateControl> {
        self.rate_control
    }

    #[must_use]
    pub const fn source(&self) -> Source {
        self.source
    }

    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    #[must_use]
    pub const fn target(&self) -> &Target {
        &self.target
    }

    #[must_use]
    pub const fn action(&self) -> &Action {
        &self.action
    }

    #[must_use]
    pub const fn timeout(&self) -> Timeout {
        self.timeout
    }

    #[must_use]
    pub const fn schedule(&self) -> &Schedule {
        &self.schedule
    }
}

/// Checks a free-text keyword value: at most [`MAX_KEYWORD_LEN`] characters, no control
/// characters, non-empty when `required`.
///
/// # Errors
/// A [`FieldError`] on `field`.
pub fn check_text(raw: &str, field: &str, required: bool) -> Result<(), FieldError> {
    if required && raw.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if raw.chars().count() > MAX_KEYWORD_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_KEYWORD_LEN} characters"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn source_matches_case_insensitively_and_stores_canonical_spelling() {
        assert_eq!(
            Source::parse("users/services").unwrap(),
            Source::UsersServices
        );
        assert_eq!(
            Source::parse("CONTENT MANAGER").unwrap().as_str(),
            "Content manager"
        );
        assert_eq!(
            serde_json::to_value(Source::Engine).unwrap(),
            json!("Engine")
        );
    }

    #[test]
    fn unknown_source_names_the_field() {
        assert_eq!(Source::parse("cron").unwrap_err().field(), "source");
    }

    #[test]
    fn target_type_accepts_only_agent_group_server() {
        assert_eq!(TargetType::parse("Group").unwrap(), TargetType::Group);
        assert_eq!(
            TargetType::parse("cluster").unwrap_err().field(),
            "target.type"
        );
    }

    #[test]
    fn target_id_must_fit_its_type() {
        assert!(Target::new(TargetType::Server, "indexer-connector").is_ok());
        assert_eq!(
            Target::new(TargetType::Agent, "").unwrap_err().field(),
            "target.id"
        );
        assert_eq!(
            Target::new(TargetType::Group, "a/b").unwrap_err().field(),
            "target.id"
        );
        assert_eq!(
            Target::new(TargetType::Server, "  ").unwrap_err().field(),
            "target.id"
        );
    }

    #[test]
    fn timeout_bounds_are_one_to_32767() {
        assert_eq!(Timeout::new(1).unwrap().secs(), 1);
        assert_eq!(Timeout::new(32767).unwrap().secs(), 32767);
        for bad in [0, -1, 32768, 40000, i64::MAX] {
            assert_eq!(Timeout::new(bad).unwrap_err().field(), "timeout", "{bad}");
        }
    }

    #[test]
    fn action_args_must_be_object_or_array_and_are_kept_verbatim() {
        let args = json!({"groups": ["a", "b"], "nested": {"x": 1}});
        let action = Action::new("set-group", args.clone(), "v5").unwrap();
        assert_eq!(action.args(), &args);
        assert!(Action::new("refresh", json!(["idx-a"]), "v5").is_ok());
        assert_eq!(
            Action::new("x", json!("str"), "v5").unwrap_err().field(),
            "action.args"
        );
        assert_eq!(
            Action::new("", json!({}), "v5").unwrap_err().field(),
            "action.name"
        );
    }

    #[test]
    fn overlong_user_is_refused() {
        let err = Command::new(
            Source::Engine,
            Some("u".repeat(MAX_KEYWORD_LEN + 1)),
            Target::new(TargetType::Server, "s").unwrap(),
            Action::new("a", json!({}), "v").unwrap(),
            Timeout::new(10).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.field(), "user");
    }
}
