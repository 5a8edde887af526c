//! Domain validation never panics, and what it accepts obeys its rules and survives a round trip
//! through the document format.

#![no_main]

use arbitrary::Arbitrary;
use cm_domain::{
    Action, AgentId, Command, GroupName, IdempotencyKey, Order, Report, ReportStatus, Source,
    Target, TargetType, Timeout,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    source: &'a str,
    user: Option<&'a str>,
    target_type: &'a str,
    target_id: &'a str,
    action: &'a str,
    version: &'a str,
    args: &'a [u8],
    timeout: i64,
    report_status: &'a str,
    code: i64,
    message: &'a str,
    data: &'a str,
    document: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    // Timeout: accepted exactly on 1..=32767.
    assert_eq!(Timeout::new(input.timeout).is_ok(), (1..=32767).contains(&input.timeout));

    // Names: what is accepted round-trips through serde and never holds a path separator.
    for raw in [input.target_id, input.source] {
        if let Ok(id) = AgentId::parse(raw, "id") {
            assert!(!id.as_str().contains('/') && id.as_str() != ".." && !id.as_str().is_empty());
            let back: AgentId = serde_json::from_value(serde_json::to_value(&id).unwrap()).unwrap();
            assert_eq!(back, id);
        }
        let _ = GroupName::parse(raw, "group");
        let _ = IdempotencyKey::parse(raw, "key");
    }

    // A whole command.
    let args = serde_json::from_slice(input.args).unwrap_or(serde_json::Value::Null);
    let command = (|| {
        let source = Source::parse(input.source)?;
        assert_eq!(Source::parse(source.as_str()).unwrap(), source);
        let kind = TargetType::parse(input.target_type)?;
        let target = Target::new(kind, input.target_id)?;
        let action = Action::new(input.action, args, input.version)?;
        let timeout = Timeout::new(input.timeout)?;
        Command::new(source, input.user.map(str::to_owned), target, action, timeout)
    })();
    if let Err(e) = &command {
        assert!(!e.field().is_empty(), "every refusal names a field");
    }

    // A report.
    if let Ok(status) = ReportStatus::parse(input.report_status) {
        if let Ok(report) = Report::new(status, input.code, input.message, input.data) {
            assert_eq!(i64::from(report.result().code()), input.code);
            assert!(report.result().data().chars().count() <= cm_domain::MAX_RESULT_DATA);
        } else {
            assert!(
                i16::try_from(input.code).is_err()
                    || input.data.chars().count() > cm_domain::MAX_RESULT_DATA
                    || cm_domain::check_text(input.message, "message", false).is_err(),
                "a report is refused only for a rule it breaks"
            );
        }
    }

    // Any document: parsing never panics, and a parsed order serializes back to itself.
    if let Ok(order) = serde_json::from_slice::<Order>(input.document) {
        let again: Order = serde_json::from_value(serde_json::to_value(&order).unwrap()).unwrap();
        assert_eq!(again, order);
    }
});
