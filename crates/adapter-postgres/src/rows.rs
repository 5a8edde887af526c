//! How an [`Order`] maps onto a row of `orders`: the document plus the columns projected from
//! it. Every write goes through [`Columns`], so projections never drift from the document.

use chrono::{DateTime, Utc};
use cm_domain::Order;
use cm_domain::time::truncate_to_millis;
use cm_ports::StoreError;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::convert_sqlx_err;

/// Times as they are projected: at the millisecond precision of the document, so comparisons
/// in SQL agree with comparisons on an order read back from its document.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    truncate_to_millis(t)
}

/// One array per column, for writing many orders in one statement with `UNNEST`.
#[derive(Debug, Default)]
pub(crate) struct Columns<'a> {
    pub(crate) order_id: Vec<Uuid>,
    pub(crate) request_id: Vec<Uuid>,
    pub(crate) agent_id: Vec<Option<&'a str>>,
    pub(crate) target_type: Vec<&'static str>,
    pub(crate) target_id: Vec<&'a str>,
    pub(crate) action: Vec<&'a str>,
    pub(crate) status: Vec<&'static str>,
    pub(crate) created_at: Vec<DateTime<Utc>>,
    pub(crate) deadline: Vec<DateTime<Utc>>,
    pub(crate) available_at: Vec<DateTime<Utc>>,
    pub(crate) redeliver_at: Vec<Option<DateTime<Utc>>>,
    pub(crate) result_deadline: Vec<Option<DateTime<Utc>>>,
    pub(crate) finished_at: Vec<Option<DateTime<Utc>>>,
    pub(crate) held: Vec<bool>,
    pub(crate) position: Vec<Option<i64>>,
    pub(crate) doc: Vec<Json<&'a Order>>,
}

impl Columns<'_> {
    /// Binds the 16 arrays, in the column order of the orders `INSERT`s (`order_id` …
    /// `position`), after the parameters `q` has already.
    pub(crate) fn bind_all<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.order_id)
            .bind(&self.request_id)
            .bind(&self.agent_id)
            .bind(&self.target_type)
            .bind(&self.target_id)
            .bind(&self.action)
            .bind(&self.status)
            .bind(&self.created_at)
            .bind(&self.deadline)
            .bind(&self.available_at)
            .bind(&self.redeliver_at)
            .bind(&self.result_deadline)
            .bind(&self.finished_at)
            .bind(&self.doc)
            .bind(&self.held)
            .bind(&self.position)
    }
}

impl<'a> Columns<'a> {
    pub(crate) fn of(orders: impl IntoIterator<Item = &'a Order>) -> Self {
        let mut c = Self::default();
        for o in orders {
            c.push(o);
        }
        c
    }

    fn push(&mut self, o: &'a Order) {
        self.order_id.push(*o.order_id().as_uuid());
        self.request_id.push(*o.request_id().as_uuid());
        self.agent_id.push(o.agent_id().map(|a| a.as_str()));
        self.target_type.push(o.target().kind().as_str());
        self.target_id.push(o.target().id());
        self.action.push(o.action().name());
        self.status.push(o.status().as_str());
        self.created_at.push(ms(o.created_at()));
        self.deadline.push(ms(o.delivery_deadline()));
        self.available_at.push(ms(o.available_from()));
        self.redeliver_at.push(o.redeliver_at().map(ms));
        self.result_deadline.push(o.result_deadline().map(ms));
        self.finished_at.push(o.finished_at().map(ms));
        self.held.push(o.is_held());
        self.position
            .push(o.position().map(|p| i64::try_from(p).unwrap_or(i64::MAX)));
        self.doc.push(Json(o));
    }

    pub(crate) fn len(&self) -> usize {
        self.order_id.len()
    }
}

/// The order in column `doc` of `row`.
pub(crate) fn order_of(row: &PgRow) -> Result<Order, StoreError> {
    row.try_get::<Json<Order>, _>("doc")
        .map(|Json(o)| o)
        .map_err(convert_sqlx_err)
}

/// The orders in column `doc` of `rows`.
pub(crate) fn orders_of(rows: &[PgRow]) -> Result<Vec<Order>, StoreError> {
    rows.iter().map(order_of).collect()
}
