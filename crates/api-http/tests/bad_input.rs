//! Hostile and malformed requests over every route, with authentication on and valid
//! credentials (so that each request reaches the parsing it attacks): each answers its
//! documented 4xx with our error body naming the field at fault, after which the service is
//! healthy and nothing was written.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use crate::support::{App, Cred, call, command, register, send};

/// One hostile request and what it must answer.
struct Case {
    method: Method,
    uri: String,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The `error.field` of the answer; `None` when no field is at fault.
    field: Option<String>,
}

impl Case {
    fn new(method: Method, uri: impl Into<String>) -> Self {
        Self {
            method,
            uri: uri.into(),
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
            status: 0,
            code: "",
            field: None,
        }
    }

    /// A body declared as JSON (whatever it holds).
    fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some("application/json");
        self.body = body.into();
        self
    }

    fn typed(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some(content_type);
        self.body = body.into();
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 400 `invalid_field` naming `field`.
    fn invalid(self, field: &str) -> Self {
        self.answers(400, "invalid_field", Some(field))
    }

    /// 400 `malformed_json` on the body.
    fn malformed(self) -> Self {
        self.answers(400, "malformed_json", Some("body"))
    }

    /// The same request sent to `uri` instead.
    fn at(mut self, uri: &str) -> Self {
        self.uri = uri.to_owned();
        self
    }

    fn answers(mut self, status: u16, code: &'static str, field: Option<&str>) -> Self {
        self.status = status;
        self.code = code;
        self.field = field.map(str::to_owned);
        self
    }

    fn label(&self) -> String {
        format!(
            "{} {} [{}] {:?}",
            self.method,
            &self.uri[..self.uri.len().min(120)],
            self.body.len(),
            String::from_utf8_lossy(&self.body[..self.body.len().min(80)])
        )
    }

    /// The credentials the route needs: agent `a1`'s on the delivery routes, a manager's
    /// elsewhere.
    fn request(&self, a1_key: &str) -> Request<Body> {
        let cred = if self.uri.contains("/poll") || self.uri.contains("/result") {
            Cred::agent("a1", a1_key)
        } else {
            Cred::manager()
        };
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.as_str());
        b = b.header(header::AUTHORIZATION, authorization(&cred));
        if let Some(ct) = self.content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        for (name, value) in &self.headers {
            b = b.header(*name, value.as_str());
        }
        b.body(Body::from(self.body.clone())).expect("request")
    }
}

fn authorization(cred: &Cred) -> String {
    use base64::Engine as _;
    match cred {
        Cred::Bearer(t) => format!("Bearer {t}"),
        Cred::Agent(id, key) => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"))
        ),
        Cred::Raw(v) => v.clone(),
        Cred::None => String::new(),
    }
}

/// A submit body of one valid command changed by `f`.
fn cmd(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut c = command("agent", "a1");
    f(&mut c);
    json!({ "commands": [c] }).to_string().into_bytes()
}

fn report(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut r = json!({"status": "success", "code": 0, "message": "", "data": ""});
    f(&mut r);
    r.to_string().into_bytes()
}

/// `depth` nested objects `{"a":{"a":…1…}}`.
fn deep_objects(depth: usize) -> String {
    let mut s = "{\"a\":".repeat(depth);
    s.push('1');
    s.push_str(&"}".repeat(depth));
    s
}

/// `depth` nested arrays.
fn deep_arrays(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

const TEN_MB: usize = 10 * 1024 * 1024;

fn unknown_uuid() -> &'static str {
    "0193a5e0-0000-7000-8000-000000000001"
}

fn cases() -> Vec<Case> {
    use Method as M;
    let submit = || Case::new(M::POST, "/api/v1/commands");
    let wazuh = || Case::new(M::POST, "/_plugins/_command_manager/commands");
    let orders = |q: &str| Case::new(M::GET, format!("/api/v1/orders?{q}"));
    let result = |id: &str| Case::new(M::POST, format!("/api/v1/orders/{id}/result"));
    let agents = |q: &str| Case::new(M::GET, format!("/api/v1/agents?{q}"));
    let put_agent = |id: &str| Case::new(M::PUT, format!("/api/v1/agents/{id}"));
    let poll = |q: &str| Case::new(M::POST, format!("/api/v1/agents/a1/poll?{q}"));
    let a1_result = || result(unknown_uuid());
    let c0 = |f: &str| format!("commands[0].{f}");
    let request = |tail: &str| format!("/api/v1/requests/{}{tail}", unknown_uuid());
    let schedule = |s: Value| cmd(move |c| c["schedule"] = s);
    let many: Vec<Value> = (0..101).map(|_| command("server", "s")).collect();
    vec![
        // ---- POST /api/v1/commands: the body's syntax
        submit().json("{").malformed(),
        submit().json("").malformed(),
        submit().json("{\"commands\": [}").malformed(),
        submit().json(vec![0xff, 0xfe, 0x00]).malformed(),
        submit()
            .json(b"{\"commands\": [\"\xff\"]}".to_vec())
            .malformed(),
        submit().json(deep_objects(10_000)).malformed(),
        submit().json(deep_arrays(10_000)).malformed(),
        submit()
            .json(format!(
                r#"{{"commands": [{{"action": {{"args": {}}}}}]}}"#,
                deep_arrays(10_000)
            ))
            .malformed(),
        submit().json("{\"commands\": [1e400]}").malformed(),
        // ---- its shape
        submit().json("null").invalid("body"),
        submit().json("[]").invalid("body"),
        submit().json("\"commands\"").invalid("body"),
        submit().json("{}").invalid("commands"),
        submit().json(r#"{"commands": []}"#).invalid("commands"),
        submit().json(r#"{"commands": "x"}"#).invalid("commands"),
        submit().json(r#"{"commands": null}"#).invalid("commands"),
        submit()
            .json(json!({ "commands": many }).to_string())
            .invalid("commands"),
        submit()
            .json(r#"{"commands": [null]}"#)
            .invalid("commands[0]"),
        submit().json(r#"{"commands": [1]}"#).invalid("commands[0]"),
        submit()
            .json(json!({"commands": [command("agent", "a1")], "dry_run": true}).to_string())
            .invalid("dry_run"),
        // ---- each field of a command
        submit()
            .json(cmd(|c| c["source"] = json!("cron")))
            .invalid(&c0("source")),
        submit()
            .json(cmd(|c| c["source"] = json!(5)))
            .invalid(&c0("source")),
        submit()
            .json(cmd(|c| c["source"] = json!("")))
            .invalid(&c0("source")),
        submit()
            .json(cmd(|c| {
                c.as_object_mut().map(|o| o.remove("source"));
            }))
            .invalid(&c0("source")),
        submit()
            .json(cmd(|c| c["target"]["type"] = json!("cluster")))
            .invalid(&c0("target.type")),
        submit()
            .json(cmd(|c| c["target"]["type"] = json!("")))
            .invalid(&c0("target.type")),
        submit()
            .json(cmd(|c| c["target"]["type"] = json!(["agent"])))
            .invalid(&c0("target.type")),
        submit()
            .json(cmd(|c| c["target"] = json!(null)))
            .invalid(&c0("target")),
        submit()
            .json(cmd(|c| c["target"] = json!("agent")))
            .invalid(&c0("target")),
        submit()
            .json(cmd(|c| c["target"]["id"] = json!("")))
            .invalid(&c0("target.id")),
        submit()
            .json(cmd(|c| c["target"]["id"] = json!(7)))
            .invalid(&c0("target.id")),
        submit()
            .json(cmd(|c| c["target"]["id"] = json!("../etc/passwd")))
            .invalid(&c0("target.id")),
        submit()
            .json(cmd(|c| c["target"]["id"] = json!("a\u{0}1")))
            .invalid(&c0("target.id")),
        submit()
            .json(cmd(|c| c["target"]["id"] = json!("x".repeat(2000))))
            .invalid(&c0("target.id")),
        submit()
            .json(cmd(|c| c["target"]["group"] = json!("g")))
            .invalid(&c0("target.group")),
        submit()
            .json(cmd(|c| c["action"] = json!([])))
            .invalid(&c0("action")),
        submit()
            .json(cmd(|c| c["action"]["name"] = json!("")))
            .invalid(&c0("action.name")),
        submit()
            .json(cmd(|c| c["action"]["name"] = json!(null)))
            .invalid(&c0("action.name")),
        submit()
            .json(cmd(|c| c["action"]["name"] = json!("n".repeat(5000))))
            .invalid(&c0("action.name")),
        submit()
            .json(cmd(|c| c["action"]["args"] = json!("str")))
            .invalid(&c0("action.args")),
        submit()
            .json(cmd(|c| c["action"]["args"] = json!(42)))
            .invalid(&c0("action.args")),
        submit()
            .json(cmd(|c| c["action"]["version"] = json!(null)))
            .invalid(&c0("action.version")),
        submit()
            .json(cmd(|c| c["action"]["version"] = json!(5)))
            .invalid(&c0("action.version")),
        submit()
            .json(cmd(|c| c["action"]["script"] = json!("rm -rf /")))
            .invalid(&c0("action.script")),
        submit()
            .json(cmd(|c| c["timeout"] = json!(0)))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["timeout"] = json!(32768)))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["timeout"] = json!(-1)))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["timeout"] = json!(1.5)))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["timeout"] = json!("100")))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["timeout"] = json!(u64::MAX)))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["timeout"] = json!(i64::MIN)))
            .invalid(&c0("timeout")),
        submit()
            .json(cmd(|c| c["user"] = json!(5)))
            .invalid(&c0("user")),
        submit()
            .json(cmd(|c| c["user"] = json!("a\u{0}b")))
            .invalid(&c0("user")),
        submit()
            .json(cmd(|c| c["user"] = json!("u".repeat(2000))))
            .invalid(&c0("user")),
        submit()
            .json(cmd(|c| c["priority"] = json!(1)))
            .invalid(&c0("priority")),
        // ---- a command's schedule (docs/rollout.md)
        submit()
            .json(schedule(json!("tomorrow")))
            .invalid(&c0("schedule")),
        submit().json(schedule(json!([]))).invalid(&c0("schedule")),
        submit()
            .json(schedule(json!({"start_at": "tomorrow"})))
            .invalid(&c0("schedule.start_at")),
        submit()
            .json(schedule(json!({"start_at": "2026-11-27"})))
            .invalid(&c0("schedule.start_at")),
        submit()
            .json(schedule(json!({"start_at": "2026-11-27T10:00:00"})))
            .invalid(&c0("schedule.start_at")),
        submit()
            .json(schedule(json!({"start_at": 1_764_237_600})))
            .invalid(&c0("schedule.start_at")),
        // Well-formed, but beyond the horizon from now: a rule of the clock, not of the
        // document, so 422.
        submit()
            .json(schedule(json!({"start_at": "9999-12-31T23:59:59Z"})))
            .answers(422, "unprocessable", Some(&c0("schedule.start_at"))),
        submit()
            .json(schedule(
                json!({"start_at": "2999-01-01T00:00:00Z", "rollout_secs": 1}),
            ))
            .answers(422, "unprocessable", Some(&c0("schedule.start_at"))),
        submit()
            .json(schedule(json!({"rollout_secs": -1})))
            .invalid(&c0("schedule.rollout_secs")),
        submit()
            .json(schedule(json!({"rollout_secs": 604_801})))
            .invalid(&c0("schedule.rollout_secs")),
        submit()
            .json(schedule(json!({"rollout_secs": u64::MAX})))
            .invalid(&c0("schedule.rollout_secs")),
        submit()
            .json(schedule(json!({"rollout_secs": 2.5})))
            .invalid(&c0("schedule.rollout_secs")),
        submit()
            .json(schedule(json!({"rollout_secs": "10"})))
            .invalid(&c0("schedule.rollout_secs")),
        submit()
            .json(schedule(json!({"rollout_secs": 10, "repeat": true})))
            .invalid(&c0("schedule.repeat")),
        // ---- well-formed but expanding to nothing: 422, nothing written
        submit()
            .json(cmd(|c| c["target"]["id"] = json!("ghost")))
            .answers(422, "unprocessable", Some("commands[0]")),
        submit()
            .json(cmd(|c| {
                c["target"] = json!({"type": "group", "id": "nobody"})
            }))
            .answers(422, "unprocessable", Some("commands[0]")),
        // ---- sizes, content types, headers
        submit()
            .json(cmd(|c| c["target"]["id"] = json!("x".repeat(TEN_MB))))
            .answers(413, "payload_too_large", Some("body")),
        submit()
            .json(vec![b' '; 2 * 1024 * 1024])
            .answers(413, "payload_too_large", Some("body")),
        submit().typed("text/plain", cmd(|_| {})).answers(
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        submit()
            .typed("application/x-www-form-urlencoded", "commands=1")
            .answers(415, "unsupported_media_type", Some("Content-Type")),
        submit().typed("application/xml", "<commands/>").answers(
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        Case::new(M::POST, "/api/v1/commands").answers(
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        submit()
            .json(cmd(|_| {}))
            .header("Idempotency-Key", "has a space")
            .invalid("Idempotency-Key"),
        submit()
            .json(cmd(|_| {}))
            .header("Idempotency-Key", "k".repeat(300))
            .invalid("Idempotency-Key"),
        submit()
            .json(cmd(|_| {}))
            .header("Idempotency-Key", "")
            .invalid("Idempotency-Key"),
        // ---- the Wazuh-compatible twin
        wazuh().json("{").malformed(),
        wazuh().json(r#"{"commands": [{}]}"#).invalid(&c0("source")),
        wazuh()
            .json(cmd(|c| c["target"]["type"] = json!("cluster")))
            .invalid(&c0("target.type")),
        wazuh().typed("text/plain", cmd(|_| {})).answers(
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        // ---- GET /api/v1/orders: every parameter
        orders("size=0").invalid("size"),
        orders("size=1001").invalid("size"),
        orders("size=-5").invalid("size"),
        orders("size=99999999999999999999999").invalid("size"),
        orders("size=ten").invalid("size"),
        orders("status=done").invalid("status"),
        orders("status=").invalid("status"),
        orders("target_type=cluster").invalid("target_type"),
        orders("since=yesterday").invalid("since"),
        orders("since=%FF").invalid("since"),
        orders("until=2026-13-01T00:00:00Z").invalid("until"),
        orders("after=garbage").invalid("after"),
        orders("after=..%2F..%2Fetc").invalid("after"),
        orders("request_id=nope").invalid("request_id"),
        orders("agent_id=a%2Fb").invalid("agent_id"),
        orders("agent_id=%00").invalid("agent_id"),
        orders("target_id=").invalid("target_id"),
        orders("action=%01").invalid("action"),
        orders("colour=red").invalid("colour"),
        orders("status=pending&status=sent").invalid("status"),
        // ---- GET /api/v1/orders/{order_id} and POST …/cancel
        Case::new(M::GET, "/api/v1/orders/not-a-uuid").invalid("order_id"),
        Case::new(M::GET, "/api/v1/orders/%FF%FE").invalid("order_id"),
        Case::new(
            M::GET,
            "/api/v1/orders/00000000-0000-0000-0000-00000000000g",
        )
        .invalid("order_id"),
        Case::new(M::GET, "/api/v1/orders/..").invalid("order_id"),
        Case::new(M::GET, "/api/v1/orders/%00").invalid("order_id"),
        Case::new(M::GET, "/api/v1/orders/a%2Fb").invalid("order_id"),
        Case::new(M::GET, format!("/api/v1/orders/{}", "f".repeat(10_000))).invalid("order_id"),
        Case::new(M::GET, "/api/v1/orders/a/b").answers(404, "not_found", None),
        Case::new(M::GET, format!("/api/v1/orders/{}", unknown_uuid())).answers(
            404,
            "not_found",
            None,
        ),
        Case::new(M::POST, "/api/v1/orders/..%2F/cancel").invalid("order_id"),
        Case::new(M::POST, format!("/api/v1/orders/{}/cancel", unknown_uuid())).answers(
            404,
            "not_found",
            None,
        ),
        Case::new(M::GET, format!("/api/v1/orders/{}/cancel", unknown_uuid())).answers(
            405,
            "method_not_allowed",
            None,
        ),
        // ---- POST /api/v1/orders/{order_id}/result
        result("%00").json(report(|_| {})).invalid("order_id"),
        result("nope").json(report(|_| {})).invalid("order_id"),
        a1_result()
            .json(report(|r| r["status"] = json!("done")))
            .invalid("status"),
        a1_result()
            .json(report(|r| r["status"] = json!("pending")))
            .invalid("status"),
        a1_result()
            .json(report(|r| {
                r.as_object_mut().map(|o| o.remove("status"));
            }))
            .invalid("status"),
        a1_result()
            .json(report(|r| r["code"] = json!("0")))
            .invalid("code"),
        a1_result()
            .json(report(|r| r["code"] = json!(99_999)))
            .invalid("code"),
        a1_result()
            .json(report(|r| r["code"] = json!(1.5)))
            .invalid("code"),
        a1_result()
            .json(report(|r| {
                r.as_object_mut().map(|o| o.remove("code"));
            }))
            .invalid("code"),
        a1_result()
            .json(report(|r| r["message"] = json!(5)))
            .invalid("message"),
        a1_result()
            .json(report(|r| r["data"] = json!({"nested": true})))
            .invalid("data"),
        a1_result()
            .json(report(|r| r["data"] = json!("d".repeat(70_000))))
            .invalid("data"),
        a1_result()
            .json(report(|r| r["extra"] = json!(5)))
            .invalid("extra"),
        a1_result().json(r#"["success"]"#).invalid("body"),
        a1_result().json(deep_objects(10_000)).malformed(),
        a1_result().typed("text/plain", report(|_| {})).answers(
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        a1_result()
            .json(report(|_| {}))
            .answers(404, "not_found", None),
        // ---- GET /api/v1/requests/{request_id}
        Case::new(M::GET, "/api/v1/requests/xyz").invalid("request_id"),
        Case::new(M::GET, "/api/v1/requests/%00").invalid("request_id"),
        Case::new(M::GET, format!("/api/v1/requests/{}", unknown_uuid())).answers(
            404,
            "not_found",
            None,
        ),
        // ---- rollout control of a request: GET …/orders, POST …/cancel, POST …/retry
        Case::new(M::GET, "/api/v1/requests/xyz/orders").invalid("request_id"),
        Case::new(M::GET, request("/orders?status=done")).invalid("status"),
        Case::new(M::GET, request("/orders?size=0")).invalid("size"),
        Case::new(M::GET, request("/orders?size=1001")).invalid("size"),
        Case::new(M::GET, request("/orders?after=garbage")).invalid("after"),
        Case::new(M::GET, request("/orders?agent_id=a1")).invalid("agent_id"),
        Case::new(M::GET, request("/orders?status=failure&status=success")).invalid("status"),
        Case::new(M::GET, request("/orders")).answers(404, "not_found", None),
        Case::new(M::POST, request("/orders")).answers(405, "method_not_allowed", None),
        Case::new(M::POST, "/api/v1/requests/%00/cancel").invalid("request_id"),
        Case::new(M::POST, "/api/v1/requests/..%2F/cancel").invalid("request_id"),
        Case::new(M::POST, request("/cancel?force=true")).invalid("force"),
        Case::new(M::POST, request("/cancel")).answers(404, "not_found", None),
        Case::new(M::GET, request("/cancel")).answers(405, "method_not_allowed", None),
        Case::new(M::POST, "/api/v1/requests/nope/retry").invalid("request_id"),
        Case::new(M::POST, request("/retry?status=done")).invalid("status"),
        Case::new(M::POST, request("/retry?status=pending")).invalid("status"),
        Case::new(M::POST, request("/retry?status=sent")).invalid("status"),
        Case::new(M::POST, request("/retry?status=in_progress")).invalid("status"),
        Case::new(M::POST, request("/retry?status=")).invalid("status"),
        Case::new(M::POST, request("/retry?status=failure&status=failure")).invalid("status"),
        Case::new(M::POST, request("/retry?agents=a1")).invalid("agents"),
        Case::new(M::POST, request("/retry")).answers(404, "not_found", None),
        Case::new(M::POST, request("/retry?status=success")).answers(404, "not_found", None),
        Case::new(M::GET, request("/retry")).answers(405, "method_not_allowed", None),
        // ---- routes that take no query parameter name any they are given
        submit()
            .json(cmd(|_| {}))
            .answers(400, "invalid_field", Some("dry_run"))
            .at("/api/v1/commands?dry_run=1"),
        Case::new(M::GET, format!("/api/v1/orders/{}?pretty", unknown_uuid())).invalid("pretty"),
        Case::new(
            M::POST,
            format!("/api/v1/orders/{}/cancel?reason=x", unknown_uuid()),
        )
        .invalid("reason"),
        a1_result()
            .json(report(|_| {}))
            .invalid("status")
            .at(&format!(
                "/api/v1/orders/{}/result?status=success",
                unknown_uuid()
            )),
        Case::new(M::GET, request("?status=failure")).invalid("status"),
        put_agent("a9")
            .json(r#"{"groups": []}"#)
            .invalid("groups")
            .at("/api/v1/agents/a9?groups=g"),
        Case::new(M::GET, "/api/v1/agents/a1?fields=id").invalid("fields"),
        Case::new(M::DELETE, "/api/v1/agents/a1?force=1").invalid("force"),
        Case::new(M::POST, "/api/v1/agents/a1/key?length=8").invalid("length"),
        Case::new(M::GET, "/healthz?verbose=1").invalid("verbose"),
        Case::new(M::GET, "/readyz?verbose=1").invalid("verbose"),
        Case::new(M::GET, "/metrics?name=x").invalid("name"),
        Case::new(M::GET, "/openapi.json?format=yaml").invalid("format"),
        // ---- GET /api/v1/agents
        agents("group=a%2Fb").invalid("group"),
        agents("group=").invalid("group"),
        agents("size=0").invalid("size"),
        agents("size=x").invalid("size"),
        agents("after=%00").invalid("after"),
        agents("page=2").invalid("page"),
        // ---- PUT /api/v1/agents/{agent_id}
        put_agent("a9")
            .json(r#"{"groups": "web"}"#)
            .invalid("groups"),
        put_agent("a9")
            .json(r#"{"groups": [null]}"#)
            .invalid("groups[0]"),
        put_agent("a9")
            .json(r#"{"groups": ["ok", ""]}"#)
            .invalid("groups[1]"),
        put_agent("a9")
            .json(r#"{"groups": ["a/b"]}"#)
            .invalid("groups[0]"),
        put_agent("a9")
            .json(r#"{"groups": [".."]}"#)
            .invalid("groups[0]"),
        put_agent("a9").json("{}").invalid("groups"),
        put_agent("a9")
            .json(r#"{"groups": [], "key": "chosen-by-me"}"#)
            .invalid("key"),
        put_agent("a9").json("[").malformed(),
        put_agent("a9")
            .json(json!({"groups": ["g".repeat(TEN_MB)]}).to_string())
            .answers(413, "payload_too_large", Some("body")),
        put_agent("a9")
            .typed("text/plain", r#"{"groups": []}"#)
            .answers(415, "unsupported_media_type", Some("Content-Type")),
        put_agent("a%20b")
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        put_agent("..")
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        put_agent("%2e%2e")
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        put_agent("a%2Fb")
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        put_agent("%00")
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        put_agent("%C3%A4")
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        put_agent(&"x".repeat(256))
            .json(r#"{"groups": []}"#)
            .invalid("agent_id"),
        // ---- GET / DELETE /api/v1/agents/{agent_id}, POST …/key
        Case::new(M::GET, "/api/v1/agents/%FF").invalid("agent_id"),
        Case::new(M::GET, "/api/v1/agents/ghost").answers(404, "not_found", None),
        Case::new(M::DELETE, "/api/v1/agents/..").invalid("agent_id"),
        Case::new(M::DELETE, "/api/v1/agents/ghost").answers(404, "not_found", None),
        Case::new(M::POST, "/api/v1/agents/%00/key").invalid("agent_id"),
        Case::new(M::POST, "/api/v1/agents/ghost/key").answers(404, "not_found", None),
        Case::new(M::GET, "/api/v1/agents/a1/key").answers(405, "method_not_allowed", None),
        // ---- POST /api/v1/agents/{agent_id}/poll
        poll("wait=-1").invalid("wait"),
        poll("wait=1.5").invalid("wait"),
        poll("wait=1e3").invalid("wait"),
        poll("wait=99999").invalid("wait"),
        // Beyond the service's `max_poll_wait` (60 s by default): refused, not lowered.
        poll("wait=61").invalid("wait"),
        poll("wait=3600").invalid("wait"),
        poll("wait=1&wait=2").invalid("wait"),
        poll("limit=0").invalid("limit"),
        poll("limit=x").invalid("limit"),
        poll("limit=1001").invalid("limit"),
        // Beyond the service's `max_poll_limit` (100 by default).
        poll("limit=101").invalid("limit"),
        poll("timeout=3").invalid("timeout"),
        Case::new(M::POST, "/api/v1/agents/../poll?wait=0").invalid("agent_id"),
        Case::new(M::POST, "/api/v1/agents/a%00/poll?wait=0").invalid("agent_id"),
        Case::new(M::GET, "/api/v1/agents/a1/poll").answers(405, "method_not_allowed", None),
        // ---- elsewhere
        Case::new(M::DELETE, "/api/v1/commands").answers(405, "method_not_allowed", None),
        Case::new(M::POST, "/healthz").answers(405, "method_not_allowed", None),
        Case::new(M::PUT, "/metrics").answers(405, "method_not_allowed", None),
        Case::new(M::GET, "/api/v2/nothing").answers(404, "not_found", None),
        Case::new(M::GET, "/api/v1/../../etc/passwd").answers(404, "not_found", None),
    ]
}

#[tokio::test]
async fn every_hostile_request_gets_its_documented_4xx_and_nothing_is_written() {
    let app = App::with_auth();
    let a1_key = register(&app, "a1", &["g"]).await;
    let cases = cases();
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let a = send(&app, case.request(&a1_key)).await;
        let label = case.label();
        if a.status.as_u16() != case.status {
            failures.push(format!(
                "{label}: {} (expected {}): {}",
                a.status,
                case.status,
                a.text()
            ));
            continue;
        }
        let body: Value = match serde_json::from_slice(&a.body) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{label}: not JSON ({e})"));
                continue;
            }
        };
        let error = &body["error"];
        let field = error
            .get("field")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let message = error["message"].as_str().unwrap_or_default();
        if error["code"] != json!(case.code)
            || field != case.field
            || body.as_object().map(|o| o.len()) != Some(1)
        {
            failures.push(format!(
                "{label}: {body} (expected code {}, field {:?})",
                case.code, case.field
            ));
        } else if case.code == "invalid_field" && !message.contains(field.as_deref().unwrap_or(""))
        {
            failures.push(format!(
                "{label}: the message does not name the field: {body}"
            ));
        } else if message.len() > 2000 {
            failures.push(format!(
                "{label}: the message echoes too much: {} bytes",
                message.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Healthy, and nothing was written.
    let a = call(&app, Method::GET, "/healthz", &Cred::None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&app, Method::GET, "/readyz", &Cred::None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let orders = call(&app, Method::GET, "/api/v1/orders", &Cred::manager(), None).await;
    assert_eq!(orders.json(), json!({"orders": [], "next": null}));
    let agents = call(&app, Method::GET, "/api/v1/agents", &Cred::manager(), None).await;
    assert_eq!(
        agents.json(),
        json!({"agents": [{"id": "a1", "groups": ["g"]}], "next": null})
    );
    // a1's key was neither rotated nor revoked.
    let a = call(
        &app,
        Method::POST,
        "/api/v1/agents/a1/poll?wait=0",
        &Cred::agent("a1", &a1_key),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
}

/// The message of a 400 answer that names `field`.
fn refusal_of(a: &crate::support::Answer, field: &str) -> String {
    let error = a.error(StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], json!("invalid_field"), "{error}");
    assert_eq!(error["field"], json!(field), "{error}");
    error["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn poll_bounds_are_the_services_own_and_a_value_beyond_them_is_refused_naming_them() {
    let settings = cm_ports::Settings {
        max_poll_wait: std::time::Duration::from_secs(10),
        max_poll_limit: 5,
        ..cm_ports::Settings::default()
    };
    let app = App::with_settings(cm_api_http::HttpSettings::default(), true, settings);
    let key = register(&app, "a1", &["g"]).await;
    let a1 = Cred::agent("a1", &key);
    let uri = |query: &str| format!("/api/v1/agents/a1/poll?{query}");

    let a = call(&app, Method::POST, &uri("wait=11"), &a1, None).await;
    assert_eq!(
        refusal_of(&a, "wait"),
        "wait: must be an integer from 0 to 10"
    );
    let a = call(&app, Method::POST, &uri("wait=0&limit=6"), &a1, None).await;
    assert_eq!(
        refusal_of(&a, "limit"),
        "limit: must be an integer from 1 to 5"
    );

    // At the bounds a poll is served: with orders waiting it answers at once.
    for _ in 0..6 {
        crate::support::submit(&app, command("agent", "a1")).await;
    }
    let a = call(&app, Method::POST, &uri("wait=10&limit=5"), &a1, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["orders"].as_array().map(Vec::len), Some(5));

    // The OpenAPI document states the same bounds.
    let doc = call(&app, Method::GET, "/openapi.json", &Cred::None, None)
        .await
        .json();
    let params = doc["paths"]["/api/v1/agents/{agent_id}/poll"]["post"]["parameters"]
        .as_array()
        .expect("poll parameters")
        .clone();
    let maximum = |name: &str| {
        params
            .iter()
            .find(|p| p["name"] == json!(name))
            .map(|p| p["schema"]["maximum"].clone())
    };
    assert_eq!(maximum("wait"), Some(json!(10)));
    assert_eq!(maximum("limit"), Some(json!(5)));
}

#[tokio::test]
async fn a_poll_without_wait_or_limit_stays_within_lower_service_bounds() {
    // A service whose longest wait is below the default wait of 30 s: an unsaid wait is the
    // service's longest, never a 400.
    let settings = cm_ports::Settings {
        max_poll_wait: std::time::Duration::ZERO,
        max_poll_limit: 2,
        ..cm_ports::Settings::default()
    };
    let app = App::with_settings(cm_api_http::HttpSettings::default(), true, settings);
    let key = register(&app, "a1", &["g"]).await;
    for _ in 0..3 {
        crate::support::submit(&app, command("agent", "a1")).await;
    }
    let a = call(
        &app,
        Method::POST,
        "/api/v1/agents/a1/poll",
        &Cred::agent("a1", &key),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["orders"].as_array().map(Vec::len), Some(2));
}
