//! Request DTOs: functions that walk a parsed JSON body and build domain values, naming the
//! path of the first field at fault (`commands[0].timeout: must be an integer`).
//!
//! Bodies are walked as [`Value`]s rather than deserialized into structs so that a wrong JSON
//! type is reported on its field, unknown fields are refused by name, and the domain's own
//! constructors decide every rule.

use std::fmt::Write as _;

use cm_domain::{
    Action, Agent, AgentId, Command, ComponentName, FieldError, GroupName, Limit, OrderId,
    RateControl, Report, ReportStatus, Schedule, Source, Target, TargetType, Timeout,
};
use cm_ports::{Consumers, ResultItem};
use serde_json::{Map, Value};

/// The fields of a submit body.
pub(crate) const SUBMIT_FIELDS: &[&str] = &["commands"];
/// The fields of one command.
pub(crate) const COMMAND_FIELDS: &[&str] = &[
    "source",
    "user",
    "target",
    "action",
    "timeout",
    "schedule",
    "rate_control",
];
/// The fields of a command's `rate_control` (docs/rollout.md).
pub(crate) const RATE_CONTROL_FIELDS: &[&str] = &["max_concurrency", "max_errors"];
/// The fields of a command's `schedule` (docs/rollout.md).
pub(crate) const SCHEDULE_FIELDS: &[&str] = &["start_at", "rollout_secs"];
/// The fields of a command's `target`.
pub(crate) const TARGET_FIELDS: &[&str] = &["type", "id"];
/// The fields of a command's `action`.
pub(crate) const ACTION_FIELDS: &[&str] = &["name", "args", "version"];
/// The fields of a result report.
pub(crate) const REPORT_FIELDS: &[&str] = &["status", "code", "message", "data"];
/// The fields of an agent registration.
pub(crate) const AGENT_FIELDS: &[&str] = &["groups"];

/// One JSON object being walked, at `path` (relative to the value the caller prefixes).
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// `value` as an object with no fields outside `known`.
    fn new(value: &'a Value, path: &str, known: &[&str]) -> Result<Self, FieldError> {
        let map = value
            .as_object()
            .ok_or_else(|| FieldError::new(path, "must be a JSON object"))?;
        let obj = Self {
            map,
            path: path.to_owned(),
        };
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(FieldError::new(
                obj.at(unknown),
                format!("is not a known field (known: {})", known.join(", ")),
            ));
        }
        Ok(obj)
    }

    fn at(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The value of `name`; `null` counts as absent.
    fn opt(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn req(&self, name: &str) -> Result<&'a Value, FieldError> {
        self.opt(name)
            .ok_or_else(|| FieldError::new(self.at(name), "is required"))
    }

    fn string(&self, name: &str) -> Result<&'a str, FieldError> {
        self.req(name)?
            .as_str()
            .ok_or_else(|| FieldError::new(self.at(name), "must be a string"))
    }

    fn opt_string(&self, name: &str) -> Result<Option<&'a str>, FieldError> {
        self.opt(name)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| FieldError::new(self.at(name), "must be a string"))
            })
            .transpose()
    }

    /// An integer; one beyond the `i64` range is saturated so the domain's range rule names it.
    fn int(&self, name: &str) -> Result<i64, FieldError> {
        self.integer(name, self.req(name)?)
    }

    fn opt_int(&self, name: &str) -> Result<Option<i64>, FieldError> {
        self.opt(name).map(|v| self.integer(name, v)).transpose()
    }

    /// A JSON Schema integer: a number without a fractional part, `100.0` and `1e2` included.
    #[allow(clippy::cast_possible_truncation, clippy::float_cmp)]
    fn integer(&self, name: &str, v: &Value) -> Result<i64, FieldError> {
        v.as_i64()
            .or_else(|| v.as_u64().map(|_| i64::MAX))
            .or_else(|| {
                // `as` saturates, so a huge value still meets the domain's range rule.
                v.as_f64()
                    .filter(|f| f.is_finite() && f.trunc() == *f)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| FieldError::new(self.at(name), "must be an integer"))
    }

    /// A rate-control limit: a non-negative integer, or a percentage `"P%"` (0 to 100, no
    /// leading zero).
    fn opt_limit(&self, name: &str) -> Result<Option<Limit>, FieldError> {
        let bad = || {
            FieldError::new(
                self.at(name),
                "must be a non-negative integer or a percentage such as \"10%\" (0% to 100%)",
            )
        };
        self.opt(name)
            .map(|v| match v {
                Value::String(s) if s.ends_with('%') => Limit::parse(s).ok_or_else(bad),
                Value::Number(_) => {
                    let n = self.integer(name, v).map_err(|_| bad())?;
                    u64::try_from(n).map(Limit::Count).map_err(|_| bad())
                }
                _ => Err(bad()),
            })
            .transpose()
    }

    fn array(&self, name: &str) -> Result<&'a [Value], FieldError> {
        self.req(name)?
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| FieldError::new(self.at(name), "must be an array"))
    }

    fn object(&self, name: &str, known: &[&str]) -> Result<Self, FieldError> {
        Obj::new(self.req(name)?, &self.at(name), known)
    }
}

/// Places an error about the whole body (an empty field) on `body`.
fn at_body(e: FieldError) -> FieldError {
    if e.field().is_empty() {
        FieldError::new("body", e.message())
    } else {
        e
    }
}

/// A submit body, `{"commands": [...]}` with 1..=`max_commands` commands.
///
/// # Errors
/// A [`FieldError`] naming the first field at fault (`commands[1].target.type`).
pub(crate) fn commands(body: &Value, max_commands: usize) -> Result<Vec<Command>, FieldError> {
    let root = Obj::new(body, "", SUBMIT_FIELDS).map_err(at_body)?;
    let list = root.array("commands")?;
    if list.is_empty() || list.len() > max_commands {
        return Err(FieldError::new(
            "commands",
            format!("must hold 1 to {max_commands} commands"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| command(c).map_err(|e| e.under(&format!("commands[{i}]"))))
        .collect()
}

/// One command; errors are relative to the command (`target.type`).
fn command(value: &Value) -> Result<Command, FieldError> {
    let o = Obj::new(value, "", COMMAND_FIELDS)?;
    let source = Source::parse(o.string("source")?)?;
    let user = o.opt_string("user")?.map(str::to_owned);
    let target = {
        let t = o.object("target", TARGET_FIELDS)?;
        let kind = TargetType::parse(t.string("type")?)?;
        Target::new(kind, t.string("id")?)?
    };
    let action = {
        let a = o.object("action", ACTION_FIELDS)?;
        let name = a.string("name")?;
        let args = a
            .opt("args")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        Action::new(name, args, a.string("version")?)?
    };
    let timeout = Timeout::new(o.int("timeout")?)?;
    let schedule = match o.opt("schedule") {
        Some(_) => {
            let s = o.object("schedule", SCHEDULE_FIELDS)?;
            Schedule::parse(s.opt_string("start_at")?, s.opt_int("rollout_secs")?)?
        }
        None => Schedule::default(),
    };
    let command = Command::new(source, user, target, action, timeout)?.with_schedule(schedule);
    Ok(match o.opt("rate_control") {
        Some(_) => {
            let r = o.object("rate_control", RATE_CONTROL_FIELDS)?;
            command.with_rate_control(RateControl {
                max_concurrency: r.opt_limit("max_concurrency")?,
                max_errors: r.opt_limit("max_errors")?,
            })
        }
        None => command,
    })
}

/// A result report, `{"status", "code", "message"?, "data"?}`.
///
/// # Errors
/// A [`FieldError`] naming the field at fault.
pub(crate) fn report(body: &Value) -> Result<Report, FieldError> {
    let o = Obj::new(body, "", REPORT_FIELDS).map_err(at_body)?;
    let status = ReportStatus::parse(o.string("status")?)?;
    let code = o.int("code")?;
    let message = o.opt_string("message")?.unwrap_or_default();
    let data = o.opt_string("data")?.unwrap_or_default();
    Report::new(status, code, message, data)
}

/// A relay's claim, `{"agents": [ids], "servers": [components], "limit"?, "wait"?}`: the
/// consumers (1 to `max_consumers` together), the limit and the wait in seconds when given.
///
/// # Errors
/// A [`FieldError`] naming the field at fault (`agents[3]`, `limit`).
pub(crate) fn relay_claim(
    body: &Value,
    max_agents: usize,
    max_servers: usize,
) -> Result<(Consumers, Option<i64>, Option<i64>), FieldError> {
    let o = Obj::new(body, "", &["agents", "servers", "limit", "wait"]).map_err(at_body)?;
    let list = |name: &str| -> Result<&[Value], FieldError> {
        match o.opt(name) {
            None => Ok(&[]),
            Some(_) => o.array(name),
        }
    };
    let names = |name: &str| -> Result<Vec<&str>, FieldError> {
        list(name)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| FieldError::new(format!("{name}[{i}]"), "must be a string"))
            })
            .collect()
    };
    let agents = names("agents")?
        .into_iter()
        .enumerate()
        .map(|(i, a)| AgentId::parse(a, &format!("agents[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let servers = names("servers")?
        .into_iter()
        .enumerate()
        .map(|(i, c)| ComponentName::parse(c, &format!("servers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if agents.is_empty() && servers.is_empty() {
        return Err(FieldError::new(
            "agents",
            "agents and servers must name at least one consumer together",
        ));
    }
    if agents.len() > max_agents {
        return Err(FieldError::new(
            "agents",
            format!("must name at most {max_agents} agents"),
        ));
    }
    if servers.len() > max_servers {
        return Err(FieldError::new(
            "servers",
            format!("must name at most {max_servers} components"),
        ));
    }
    Ok((
        Consumers::new(agents, servers),
        o.opt_int("limit")?,
        o.opt_int("wait")?,
    ))
}

/// One item of a batch report: its `order_id` as sent (echoed in the answer), and the parsed
/// item or what is wrong with it.
pub(crate) type ResultEntry = (Value, Result<ResultItem, FieldError>);

/// The items of a batch report, `{"results": [{"order_id", "status", "code", "message"?,
/// "data"?}, ...]}` (1 to `max` items): each item parsed on its own, so that one bad item is
/// that item's outcome (`invalid`) and never fails the others. Each entry is the item's
/// `order_id` as sent (for the answer) and the parsed item or what is wrong with it.
///
/// # Errors
/// A [`FieldError`] when the body itself is not a list of 1 to `max` results.
pub(crate) fn results(body: &Value, max: usize) -> Result<Vec<ResultEntry>, FieldError> {
    let o = Obj::new(body, "", &["results"]).map_err(at_body)?;
    let items = o.array("results")?;
    if items.is_empty() || items.len() > max {
        return Err(FieldError::new(
            "results",
            format!("must hold 1 to {max} results"),
        ));
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let sent_id = item.get("order_id").cloned().unwrap_or(Value::Null);
            let parsed = (|| {
                let path = format!("results[{i}]");
                let mut known = REPORT_FIELDS.to_vec();
                known.push("order_id");
                let o = Obj::new(item, &path, &known)?;
                let order_id = OrderId::parse(o.string("order_id")?, &o.at("order_id"))?;
                let mut rest = item.clone();
                if let Some(map) = rest.as_object_mut() {
                    map.remove("order_id");
                }
                let report = report(&rest)
                    .map_err(|e| FieldError::new(format!("{path}.{}", e.field()), e.message()))?;
                Ok(ResultItem { order_id, report })
            })();
            (sent_id, parsed)
        })
        .collect())
}

/// An agent registration, `{"groups": [...]}`, for the agent `id` of the path.
///
/// # Errors
/// A [`FieldError`] naming the field at fault (`groups[2]`).
pub(crate) fn agent(id: AgentId, body: &Value) -> Result<Agent, FieldError> {
    let o = Obj::new(body, "", AGENT_FIELDS).map_err(at_body)?;
    let groups = o
        .array("groups")?
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let field = format!("groups[{i}]");
            let raw = g
                .as_str()
                .ok_or_else(|| FieldError::new(field.as_str(), "must be a string"))?;
            GroupName::parse(raw, &field)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Agent::new(id, groups))
}

/// The fields of one item of a bulk registration.
pub(crate) const BULK_AGENT_FIELDS: &[&str] = &["id", "groups"];

/// A bulk registration, `{"agents": [{"id", "groups"}, ...]}` with 1 to `max` items, checked
/// as a whole. An id given twice is registered once, with the groups of its last item, at the
/// place of its first.
///
/// # Errors
/// A [`FieldError`] naming the first item at fault (`agents[17].id`).
pub(crate) fn agents_bulk(body: &Value, max: usize) -> Result<Vec<Agent>, FieldError> {
    let o = Obj::new(body, "", &["agents"]).map_err(at_body)?;
    let items = o.array("agents")?;
    if items.is_empty() || items.len() > max {
        return Err(FieldError::new(
            "agents",
            format!("must hold 1 to {max} agents"),
        ));
    }
    let mut agents: Vec<Agent> = Vec::with_capacity(items.len());
    let mut index: std::collections::HashMap<AgentId, usize> =
        std::collections::HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("agents[{i}]");
        let a = Obj::new(item, &path, BULK_AGENT_FIELDS)?;
        let id = AgentId::parse(a.string("id")?, &a.at("id"))?;
        let groups = a
            .array("groups")?
            .iter()
            .enumerate()
            .map(|(j, g)| {
                let field = format!("{path}.groups[{j}]");
                let raw = g
                    .as_str()
                    .ok_or_else(|| FieldError::new(field.as_str(), "must be a string"))?;
                GroupName::parse(raw, &field)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let agent = Agent::new(id.clone(), groups);
        match index.get(&id) {
            Some(&at) => agents[at] = agent,
            None => {
                index.insert(id, agents.len());
                agents.push(agent);
            }
        }
    }
    Ok(agents)
}

/// A stable text form of `value`: object keys sorted, no insignificant whitespace. Equal JSON
/// bodies give equal fingerprints however their keys were ordered or spaced.
pub(crate) fn fingerprint(value: &Value) -> String {
    let mut out = String::new();
    canonical(value, &mut out);
    out
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "source": "Users/Services",
            "user": "admin",
            "target": {"type": "agent", "id": "a1"},
            "action": {"name": "restart", "args": {}, "version": "v5"},
            "timeout": 100
        })
    }

    fn field_of(body: Value) -> String {
        commands(&body, 100).unwrap_err().field().to_owned()
    }

    #[test]
    fn a_valid_command_builds_a_domain_command() {
        let cmds = commands(&json!({"commands": [valid()]}), 100).unwrap();
        assert_eq!(cmds[0].target().id(), "a1");
        assert_eq!(cmds[0].timeout().secs(), 100);
    }

    #[test]
    fn wrong_json_types_are_named_by_their_path() {
        let mut c = valid();
        c["timeout"] = json!("100");
        assert_eq!(
            field_of(json!({"commands": [valid(), c]})),
            "commands[1].timeout"
        );
        let mut c = valid();
        c["target"] = json!("agent");
        assert_eq!(field_of(json!({"commands": [c]})), "commands[0].target");
        assert_eq!(field_of(json!({"commands": [1]})), "commands[0]");
        assert_eq!(field_of(json!({"commands": {}})), "commands");
        assert_eq!(field_of(json!([])), "body");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let mut c = valid();
        c["action"]["extra"] = json!(1);
        assert_eq!(
            field_of(json!({"commands": [c]})),
            "commands[0].action.extra"
        );
        assert_eq!(field_of(json!({"commands": [valid()], "x": 1})), "x");
    }

    #[test]
    fn an_integral_number_in_any_notation_is_an_integer() {
        for timeout in [json!(100.0), serde_json::from_str::<Value>("1e2").unwrap()] {
            let mut c = valid();
            c["timeout"] = timeout.clone();
            let cmds = commands(&json!({"commands": [c]}), 100).unwrap();
            assert_eq!(cmds[0].timeout().secs(), 100, "{timeout}");
        }
        let mut c = valid();
        c["timeout"] = json!(100.5);
        assert_eq!(field_of(json!({"commands": [c]})), "commands[0].timeout");
        let mut c = valid();
        c["timeout"] = json!(1e300);
        assert_eq!(field_of(json!({"commands": [c]})), "commands[0].timeout");
    }

    #[test]
    fn a_huge_integer_is_refused_by_the_range_rule() {
        let mut c = valid();
        c["timeout"] = json!(u64::MAX);
        let err = commands(&json!({"commands": [c]}), 100).unwrap_err();
        assert_eq!(err.field(), "commands[0].timeout");
        assert!(err.message().contains("32767"), "{}", err.message());
    }

    #[test]
    fn a_schedule_is_optional_and_each_of_its_fields_too() {
        let mut c = valid();
        c["schedule"] = json!({"start_at": "2026-11-27T10:00:00Z", "rollout_secs": 600});
        let cmds = commands(&json!({"commands": [c]}), 100).unwrap();
        let s = cmds[0].schedule();
        assert_eq!(
            s.start_at().map(|t| t.to_rfc3339()),
            Some("2026-11-27T10:00:00+00:00".to_owned())
        );
        assert_eq!(s.rollout_secs(), Some(600));
        for schedule in [
            json!({}),
            json!(null),
            json!({"start_at": null, "rollout_secs": null}),
        ] {
            let mut c = valid();
            c["schedule"] = schedule;
            let cmds = commands(&json!({"commands": [c]}), 100).unwrap();
            assert_eq!(cmds[0].schedule(), &Schedule::default());
        }
        let cmds = commands(&json!({"commands": [valid()]}), 100).unwrap();
        assert_eq!(cmds[0].schedule(), &Schedule::default());
    }

    #[test]
    fn a_bad_schedule_is_named_by_its_path() {
        for (schedule, field) in [
            (json!("soon"), "commands[0].schedule"),
            (json!({"start_at": "soon"}), "commands[0].schedule.start_at"),
            (json!({"start_at": 5}), "commands[0].schedule.start_at"),
            (
                json!({"rollout_secs": -1}),
                "commands[0].schedule.rollout_secs",
            ),
            (
                json!({"rollout_secs": 1.5}),
                "commands[0].schedule.rollout_secs",
            ),
            (
                json!({"rollout_secs": "10"}),
                "commands[0].schedule.rollout_secs",
            ),
            (
                json!({"rollout_secs": u64::MAX}),
                "commands[0].schedule.rollout_secs",
            ),
            (
                json!({"rollout_secs": 604_801}),
                "commands[0].schedule.rollout_secs",
            ),
            (json!({"every": "day"}), "commands[0].schedule.every"),
        ] {
            let mut c = valid();
            c["schedule"] = schedule.clone();
            assert_eq!(field_of(json!({"commands": [c]})), field, "{schedule}");
        }
    }

    #[test]
    fn missing_args_default_to_an_empty_object() {
        let mut c = valid();
        c["action"].as_object_mut().unwrap().remove("args");
        let cmds = commands(&json!({"commands": [c]}), 100).unwrap();
        assert_eq!(cmds[0].action().args(), &json!({}));
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_spacing() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é"}], "a": null}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&b), r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#);
        assert_ne!(fingerprint(&a), fingerprint(&json!({"a": null})));
    }

    #[test]
    fn report_code_is_required_and_message_and_data_default_to_empty() {
        assert_eq!(
            report(&json!({"status": "success"})).unwrap_err().field(),
            "code"
        );
        let r = report(&json!({"status": "failure", "code": 2})).unwrap();
        assert_eq!(r.result().message(), "");
        assert_eq!(report(&json!("x")).unwrap_err().field(), "body");
    }

    #[test]
    fn agent_groups_are_named_by_index() {
        let id = AgentId::parse("a1", "agent_id").unwrap();
        let err = agent(id.clone(), &json!({"groups": ["ok", "a/b"]})).unwrap_err();
        assert_eq!(err.field(), "groups[1]");
        let err = agent(id, &json!({"groups": ["ok", 3]})).unwrap_err();
        assert_eq!(err.field(), "groups[1]");
    }
}
