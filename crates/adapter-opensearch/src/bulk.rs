//! `_bulk` requests: operations serialised straight into one NDJSON buffer (no intermediate
//! `serde_json::Value`), sent [`BULK_CHUNK`] at a time, items that failed with 429 / 5xx sent
//! again with back-off, and answers read only as far as the caller needs (the `errors` flag,
//! and the items only when it is set or the caller wants each item's `result`).

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use cm_ports::StoreError;
use opensearch::http::Method;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::OpenSearchBackend;
use crate::client::Retry;
use crate::error::{OsError, error_of, is_retryable, kind};

/// Attempts of a bulk item that failed with 429 / 5xx, and the first back-off (doubling).
const BULK_ATTEMPTS: usize = 4;
const BULK_BACKOFF: Duration = Duration::from_millis(100);
/// Most operations per bulk request.
const BULK_CHUNK: usize = 2_000;

/// The action of one bulk operation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Create,
    Index,
    Update,
    Delete,
}

impl Op {
    const fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Index => "index",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// The metadata of an action line: `{"<op>": {"_index", "_id", …}}`.
#[derive(Debug, Serialize)]
pub(crate) struct Meta<'a, I: Serialize + ?Sized> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a I,
    #[serde(skip_serializing_if = "Option::is_none")]
    if_seq_no: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    if_primary_term: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_on_conflict: Option<u32>,
}

impl<'a, I: Serialize + ?Sized> Meta<'a, I> {
    /// Document `id` (anything that serialises as the id string) of `index`.
    pub(crate) const fn new(index: &'a str, id: &'a I) -> Self {
        Self {
            index,
            id,
            if_seq_no: None,
            if_primary_term: None,
            retry_on_conflict: None,
        }
    }

    /// Only if the document is still at this version (compare-and-set).
    pub(crate) const fn if_version(mut self, seq_no: i64, primary_term: i64) -> Self {
        self.if_seq_no = Some(seq_no);
        self.if_primary_term = Some(primary_term);
        self
    }

    pub(crate) const fn retry_on_conflict(mut self, times: u32) -> Self {
        self.retry_on_conflict = Some(times);
        self
    }
}

/// Bulk operations as the NDJSON lines of a `_bulk` body, one after the other in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Ops {
    body: Vec<u8>,
    /// Where each operation's lines end in `body` (each starts where the previous one ends).
    ends: Vec<usize>,
    /// Whether an operation must not be sent twice (see [`Ops::retry`]).
    unrepeatable: bool,
}

impl Ops {
    /// Room for `ops` operations of about `bytes_each` bytes.
    pub(crate) fn with_capacity(ops: usize, bytes_each: usize) -> Self {
        Self {
            body: Vec::with_capacity(ops.saturating_mul(bytes_each)),
            ends: Vec::with_capacity(ops),
            unrepeatable: false,
        }
    }

    /// Whether the body may be sent to another node after a node failed with its outcome
    /// unknown: only when every operation is a `create` with an id (a copy that finds the
    /// first one's document fails 409 per item, which the callers read as "already stored")
    /// or an unconditional `index` of a whole document (a copy writes the same document).
    /// Conditional writes (`if_seq_no`), updates and deletes are sent again only when no node
    /// received them (see [`Retry`]).
    pub(crate) const fn retry(&self) -> Retry {
        if self.unrepeatable {
            Retry::Unsent
        } else {
            Retry::Always
        }
    }

    /// Appends one operation: its action line and, except for deletes, its document.
    pub(crate) fn push<I, S>(
        &mut self,
        op: Op,
        meta: &Meta<'_, I>,
        source: Option<&S>,
    ) -> Result<(), StoreError>
    where
        I: Serialize + ?Sized,
        S: Serialize + ?Sized,
    {
        let start = self.body.len();
        let written = self.write(op, meta, source);
        if let Err(e) = written {
            self.body.truncate(start);
            return Err(StoreError::Corrupt(format!(
                "cannot serialise a bulk {} of document {}: {e}",
                op.name(),
                serde_json::to_string(meta.id).unwrap_or_default()
            )));
        }
        self.ends.push(self.body.len());
        if matches!(op, Op::Update | Op::Delete) || meta.if_seq_no.is_some() {
            self.unrepeatable = true;
        }
        Ok(())
    }

    fn write<I, S>(
        &mut self,
        op: Op,
        meta: &Meta<'_, I>,
        source: Option<&S>,
    ) -> Result<(), serde_json::Error>
    where
        I: Serialize + ?Sized,
        S: Serialize + ?Sized,
    {
        self.body.extend_from_slice(b"{\"");
        self.body.extend_from_slice(op.name().as_bytes());
        self.body.extend_from_slice(b"\":");
        serde_json::to_writer(&mut self.body, meta)?;
        self.body.extend_from_slice(b"}\n");
        if let Some(source) = source {
            serde_json::to_writer(&mut self.body, source)?;
            self.body.push(b'\n');
        }
        Ok(())
    }

    pub(crate) const fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of operations `range` (contiguous in the buffer).
    fn span(&self, range: Range<usize>) -> &[u8] {
        let start = match range.start {
            0 => 0,
            i => self.ends[i - 1],
        };
        let end = match range.end {
            0 => 0,
            i => self.ends[i - 1],
        };
        &self.body[start..end]
    }

    fn op(&self, i: usize) -> &[u8] {
        self.span(i..i + 1)
    }
}

/// How much of a bulk answer the caller needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Which items failed, and why: an answer whose `errors` flag is false is not read further
    /// (its items are [`ItemOutcome::Done`] without a result). Not for deletes: deleting a
    /// missing document is a 404 item that does not set `errors`.
    Failures,
    /// Each item's outcome with its `result` (created or updated, deleted or not found).
    Results,
}

/// What OpenSearch says it did with an item (`not_found`: a delete of a missing document, a
/// 404 item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Applied {
    Created,
    Updated,
    Deleted,
    NotFound,
    Noop,
    #[serde(other)]
    Other,
}

/// The outcome of one bulk item.
#[derive(Debug, Clone)]
pub(crate) enum ItemOutcome {
    /// Applied; its `result` when read ([`Need::Results`], or an answer with errors).
    Done { result: Option<Applied> },
    Failed {
        status: u16,
        kind: String,
        reason: String,
    },
}

impl ItemOutcome {
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Self::Failed { status, kind, .. }
            if *status == 409 || kind == kind::VERSION_CONFLICT)
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Done { result } => format!("done ({result:?})"),
            Self::Failed {
                status,
                kind,
                reason,
            } => format!("{status} {kind}: {reason}"),
        }
    }
}

/// The body of one item: `{"status", "result"?, "error"?, …}` (the rest is skipped).
#[derive(Deserialize)]
struct ItemBody {
    status: Option<u16>,
    result: Option<Applied>,
    error: Option<Value>,
}

impl ItemBody {
    fn outcome(self) -> ItemOutcome {
        let status = self.status.unwrap_or(500);
        match self.error {
            None if (200..300).contains(&status) => ItemOutcome::Done {
                result: self.result,
            },
            None => ItemOutcome::Failed {
                status,
                kind: String::new(),
                reason: match self.result {
                    Some(result) => format!("{result:?}"),
                    None => "no result".to_owned(),
                },
            },
            Some(error) => {
                let (kind, reason) = error_of(&error);
                ItemOutcome::Failed {
                    status,
                    kind,
                    reason,
                }
            }
        }
    }
}

/// One item of a bulk answer: `{"<op>": {…}}`.
struct Item(ItemOutcome);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bulk item {\"<op>\": {…}}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
                let mut outcome = None;
                while let Some((IgnoredAny, body)) = map.next_entry::<IgnoredAny, ItemBody>()? {
                    outcome.get_or_insert_with(|| body.outcome());
                }
                outcome
                    .map(Item)
                    .ok_or_else(|| de::Error::custom("an empty bulk item"))
            }
        }
        deserializer.deserialize_map(ItemVisitor)
    }
}

/// The number of elements of an array, each skipped unread.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        deserializer.deserialize_seq(CountVisitor)
    }
}

/// A bulk answer's `errors` flag, its items skipped and counted.
#[derive(Deserialize)]
struct Head {
    errors: bool,
    items: Count,
}

/// A bulk answer's items, read.
#[derive(Deserialize)]
struct Full {
    items: Vec<Item>,
}

/// The outcomes of the `ops` items of a 2xx bulk answer, read as far as `need` requires.
fn read_answer(body: &[u8], ops: usize, need: Need) -> Result<Vec<ItemOutcome>, OsError> {
    let decode = |e: serde_json::Error| OsError::Decode(format!("bulk answer: {e}"));
    let count = |items: usize| {
        if items == ops {
            Ok(())
        } else {
            Err(OsError::Decode(format!(
                "bulk answered {items} items for {ops} operations"
            )))
        }
    };
    if need == Need::Failures {
        let head: Head = serde_json::from_slice(body).map_err(decode)?;
        count(head.items.0)?;
        if !head.errors {
            return Ok(vec![ItemOutcome::Done { result: None }; ops]);
        }
    }
    let full: Full = serde_json::from_slice(body).map_err(decode)?;
    count(full.items.len())?;
    Ok(full.items.into_iter().map(|Item(o)| o).collect())
}

impl OpenSearchBackend {
    /// Sends bulk operations, retrying items that failed with 429 / 5xx (with back-off);
    /// returns each operation's final outcome, in order.
    pub(crate) async fn bulk(&self, ops: &Ops, need: Need) -> Result<Vec<ItemOutcome>, StoreError> {
        let mut outcomes: Vec<Option<ItemOutcome>> = Vec::new();
        outcomes.resize_with(ops.len(), || None);
        let mut again_body = Vec::new();
        for start in (0..ops.len()).step_by(BULK_CHUNK) {
            let chunk = start..(start + BULK_CHUNK).min(ops.len());
            let mut todo: Vec<usize> = chunk.clone().collect();
            let mut delay = BULK_BACKOFF;
            for attempt in 1..=BULK_ATTEMPTS {
                let body = if todo.len() == chunk.len() {
                    ops.span(chunk.clone())
                } else {
                    again_body.clear();
                    for &i in &todo {
                        again_body.extend_from_slice(ops.op(i));
                    }
                    again_body.as_slice()
                };
                let (status, answer) = self
                    .http()
                    .send_raw_with(
                        Method::Post,
                        "/_bulk",
                        &[],
                        Some(body),
                        "application/x-ndjson",
                        ops.retry(),
                    )
                    .await?;
                let mut again = Vec::new();
                if status == 429 && attempt < BULK_ATTEMPTS {
                    again.clone_from(&todo);
                } else if !(200..300).contains(&status) {
                    let body = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                    return Err(OsError::from_answer(status, &body).into());
                } else {
                    let items = read_answer(&answer, todo.len(), need)?;
                    for (&i, outcome) in todo.iter().zip(items) {
                        if attempt < BULK_ATTEMPTS
                            && matches!(outcome, ItemOutcome::Failed { status, .. } if is_retryable(status))
                        {
                            again.push(i);
                        }
                        outcomes[i] = Some(outcome);
                    }
                }
                if again.is_empty() {
                    break;
                }
                tracing::debug!(
                    retrying = again.len(),
                    attempt,
                    "bulk items refused, retrying"
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
                todo = again;
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(ItemOutcome::Failed {
                    status: 429,
                    kind: "rejected".to_owned(),
                    reason: "the cluster kept refusing the bulk request".to_owned(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn operations_are_ndjson_lines_and_spans_of_them() {
        let mut ops = Ops::default();
        ops.push(Op::Create, &Meta::new("i", "a"), Some(&json!({"x": 1})))
            .unwrap();
        ops.push(
            Op::Delete,
            &Meta::new("i", &7_u32).if_version(3, 1),
            None::<&()>,
        )
        .unwrap();
        ops.push(
            Op::Update,
            &Meta::new("j", "c").retry_on_conflict(5),
            Some(&json!({"doc": {}})),
        )
        .unwrap();
        assert_eq!(ops.len(), 3);
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        assert_eq!(
            text(ops.op(0)),
            "{\"create\":{\"_index\":\"i\",\"_id\":\"a\"}}\n{\"x\":1}\n"
        );
        assert_eq!(
            text(ops.op(1)),
            "{\"delete\":{\"_index\":\"i\",\"_id\":7,\"if_seq_no\":3,\"if_primary_term\":1}}\n"
        );
        assert_eq!(
            text(ops.span(1..3)),
            format!("{}{}", text(ops.op(1)), text(ops.op(2)))
        );
        for line in text(ops.span(0..3)).lines() {
            serde_json::from_str::<Value>(line).expect("each line is JSON");
        }
    }

    #[test]
    fn an_order_id_is_written_as_its_document_id() {
        let id = cm_domain::OrderId::from_uuid(uuid::Uuid::now_v7());
        let mut ops = Ops::default();
        ops.push(Op::Delete, &Meta::new("i", &id), None::<&()>)
            .unwrap();
        let line: Value = serde_json::from_slice(ops.op(0)).unwrap();
        assert_eq!(line["delete"]["_id"], crate::doc_id(&id));
    }

    #[test]
    fn an_answer_without_errors_is_only_counted_unless_results_are_needed() {
        let ok = json!({"took": 3, "errors": false, "items": [
            {"create": {"_id": "a", "status": 201, "result": "created", "_shards": {"total": 1}}},
            {"update": {"_id": "b", "status": 200, "result": "noop"}}
        ]})
        .to_string();
        let quick = read_answer(ok.as_bytes(), 2, Need::Failures).unwrap();
        assert!(matches!(
            quick[..],
            [
                ItemOutcome::Done { result: None },
                ItemOutcome::Done { result: None }
            ]
        ));
        let full = read_answer(ok.as_bytes(), 2, Need::Results).unwrap();
        assert!(matches!(
            full[..],
            [
                ItemOutcome::Done {
                    result: Some(Applied::Created)
                },
                ItemOutcome::Done {
                    result: Some(Applied::Noop)
                }
            ]
        ));
        assert!(read_answer(ok.as_bytes(), 3, Need::Failures).is_err());
        assert!(read_answer(ok.as_bytes(), 3, Need::Results).is_err());
    }

    #[test]
    fn failed_items_keep_their_status_kind_and_reason() {
        let answer = json!({"errors": true, "items": [
            {"create": {"_id": "a", "status": 201, "result": "created"}},
            {"create": {"_id": "b", "status": 409, "error": {
                "type": kind::VERSION_CONFLICT, "reason": "document already exists"}}},
            {"index": {"_id": "c", "status": 429, "error": {
                "type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"create": {"_id": "d", "status": 400, "error": {
                "type": kind::MAPPER_PARSING, "reason": "failed to parse",
                "caused_by": {"type": "x", "reason": "For input string"}}}},
            {"delete": {"_id": "e", "status": 404, "result": "not_found"}}
        ]})
        .to_string();
        let items = read_answer(answer.as_bytes(), 5, Need::Failures).unwrap();
        assert!(matches!(
            items[0],
            ItemOutcome::Done {
                result: Some(Applied::Created)
            }
        ));
        assert!(items[1].is_conflict());
        assert!(matches!(&items[2], ItemOutcome::Failed { status: 429, .. }));
        let ItemOutcome::Failed {
            status,
            kind: k,
            reason,
        } = &items[3]
        else {
            panic!("failed expected");
        };
        assert_eq!((*status, k.as_str()), (400, kind::MAPPER_PARSING));
        assert_eq!(reason, "failed to parse (caused by: For input string)");
        assert!(matches!(&items[4], ItemOutcome::Failed { status: 404, .. }));
        assert!(!items[4].is_conflict());
    }
}
