//! The OpenSearch backend: the orders stream ([`cm_ports::OrderStore`]) in the Wazuh
//! `wazuh-commands` index, the request records ([`cm_ports::RequestStore`]) in
//! `wazuh-commands-requests`, the agents registry ([`cm_ports::AgentRegistry`]) in
//! `wazuh-agents`, and a [`cm_ports::Notifier`] — a drop-in for Wazuh's command-manager plugin.
//!
//! * Layout: each order is one document in the domain's serde form (docs/orders.md), its order id
//!   as `_id`; the composable index template `<orders_index>` for `<orders_index>*` carries
//!   Wazuh's mapping plus explicit mappings for the fields this service adds, and also covers
//!   the archive index. Created (or extended) by [`OpenSearchBackend::open`] and
//!   [`OpenSearchBackend::migrate`].
//! * Concurrency: every state change is a write conditional on the `_seq_no`/`_primary_term`
//!   the change was computed from (compare-and-set), so concurrent polls, schedulers and
//!   instances never apply two transitions to one order. Candidates come from searches (which
//!   may be stale); the domain's predicates are applied to realtime reads (`_mget`, `GET`).
//! * Visibility: searches see writes only after a refresh (every 5 s with Wazuh's template).
//!   This instance remembers the orders it wrote since its last refresh and reads them in
//!   realtime in claims (see `visibility`); claims refresh the index when the last refresh
//!   is older than the poll interval; listings refresh after this instance wrote; maintenance
//!   batches refresh before each search. Agent writes do not refresh the agents index; counts
//!   of agents and the first page of an agent listing (where a group expansion starts) refresh
//!   it first, so they see every registration that finished before, through any instance.
//! * Request records: one document per request in their own index (`<requests_index>`, with a
//!   template of its own), the request id as `_id`, the serde form of `RequestRecord`.
//!   Replacements are conditional on `_seq_no`/`_primary_term` of a realtime read whose
//!   revision is the expected one. Claims cannot join the two indices: they read the records of
//!   their candidates' requests with one realtime `_mget` (the request gate, see `orders`).
//! * Writes of many documents: `_bulk` bodies serialised straight from the domain types (see
//!   `bulk`).
//! * Across instances: no notification channel; one task per backend (see `watch`) refreshes
//!   and searches once per poll interval for the deliverable orders of every agent with a
//!   poll waiting on this instance, and wakes those polls: other instances' orders arrive
//!   within about one interval, at a cost that does not grow with the number of waiting polls.
//!
//! No `opensearch` type crosses the port: errors become [`StoreError`] in one place
//! (`impl From<OsError> for StoreError`).

mod agents;
mod bulk;
mod client;
mod components;
mod error;
mod mapping;
mod notify;
mod orders;
mod requests;
mod settings;
mod visibility;
mod watch;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use cm_domain::{Order, OrderId};
use cm_ports::{StoreError, WakeHub};
use opensearch::http::Method;
use serde_json::{Value, json};

use crate::client::Http;
use crate::error::{corrupt, error_of};
use crate::mapping::Fields;
pub use crate::notify::OpenSearchNotifier;
pub use crate::settings::OpenSearchSettings;
use crate::visibility::{Fresh, RECENT_CAP, Visibility};
use crate::watch::Watch;

/// Largest `size` of one search (OpenSearch's default `index.max_result_window`).
const MAX_WINDOW: usize = 10_000;

/// The orders stream and agents registry in one OpenSearch cluster. Cheap to clone: clones
/// share one client and one refresh bookkeeping.
#[derive(Clone)]
pub struct OpenSearchBackend {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
    orders: String,
    agents: String,
    archive: String,
    /// The registry of server components.
    servers: String,
    /// The request records.
    requests: String,
    fields: Fields,
    poll_interval: Duration,
    /// What searches of the orders index may not see yet.
    visibility: Visibility,
    /// The same bookkeeping for the agents index (which remembers no orders): agent writes do
    /// not refresh; counts and first pages of listings do (see `agents`).
    agents_visibility: Visibility,
    /// The same for the requests index: listings refresh it after this instance wrote.
    requests_visibility: Visibility,
    hub: WakeHub,
    /// The cross-instance watch, while a notifier of this backend is alive (the notifiers own
    /// it; the task holds the backend).
    watch: Mutex<Weak<Watch>>,
}

impl fmt::Debug for OpenSearchBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenSearchBackend")
            .field("orders_index", &self.inner.orders)
            .field("agents_index", &self.inner.agents)
            .field("archive_index", &self.inner.archive)
            .field("requests_index", &self.inner.requests)
            .field("poll_interval", &self.inner.poll_interval)
            .finish_non_exhaustive()
    }
}

fn check(settings: &OpenSearchSettings) -> Result<Http, StoreError> {
    settings.validate().map_err(StoreError::Unavailable)?;
    Http::new(settings)
}

impl OpenSearchBackend {
    /// Connects, and creates the index template and the indices when missing (adding this
    /// service's fields to the mapping of indices that exist).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the cluster cannot be reached (or a setting is
    /// unusable); [`StoreError::Corrupt`] when an existing index maps a field incompatibly.
    #[tracing::instrument(skip(settings), fields(url = %settings::redact_url(&settings.url)))]
    pub async fn open(settings: &OpenSearchSettings) -> Result<Self, StoreError> {
        let http = check(settings)?;
        let ensured = mapping::ensure(&http, settings).await?;
        tracing::info!(
            orders_index = %settings.orders_index,
            agents_index = %settings.agents_index,
            created = ensured.created,
            "opensearch storage open"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                orders: settings.orders_index.clone(),
                agents: settings.agents_index.clone(),
                archive: settings.archive_index.clone(),
                servers: settings.servers_index.clone(),
                requests: settings.requests_index.clone(),
                fields: ensured.fields,
                poll_interval: settings.poll_interval(),
                visibility: Visibility::new(),
                agents_visibility: Visibility::new(),
                requests_visibility: Visibility::new(),
                hub: WakeHub::new(),
                watch: Mutex::new(Weak::new()),
            }),
        })
    }

    /// Creates or updates the index template and creates missing indices (`command-manager
    /// migrate`); returns how many templates and indices it created (0 when all existed).
    ///
    /// # Errors
    /// As [`Self::open`].
    #[tracing::instrument(skip(settings), fields(url = %settings::redact_url(&settings.url)))]
    pub async fn migrate(settings: &OpenSearchSettings) -> Result<usize, StoreError> {
        let http = check(settings)?;
        let ensured = mapping::ensure(&http, settings).await?;
        tracing::info!(
            created = ensured.created,
            "opensearch templates and indices in place"
        );
        Ok(ensured.created)
    }

    /// The notifier of this instance: wakes its long-polls on `notify`, and those waiting for
    /// orders written through other instances within about `poll_interval_ms`. Starts the
    /// backend's watch (one task, whatever the number of notifiers and waiting polls: see
    /// `watch`) on the current Tokio runtime, unless it runs already; called outside of a
    /// runtime, waiting polls re-check every `poll_interval_ms` by themselves instead.
    /// Notifiers of one backend (and its clones) share their waiting polls and the watch,
    /// which stops when the last of them is dropped.
    #[must_use]
    pub fn notifier(&self) -> OpenSearchNotifier {
        let watch = {
            let mut slot = self
                .inner
                .watch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match slot.upgrade().filter(|w| w.is_running()) {
                Some(running) => Some(running),
                None => {
                    let started = Watch::start(self.clone(), self.inner.poll_interval);
                    if started.is_none() {
                        tracing::warn!(
                            "no tokio runtime: waiting polls will re-check opensearch every poll \
                             interval by themselves"
                        );
                    }
                    *slot = started.as_ref().map_or_else(Weak::new, Arc::downgrade);
                    started
                }
            }
        };
        OpenSearchNotifier::new(self.inner.hub.clone(), self.inner.poll_interval, watch)
    }

    /// Stops the cross-instance watch (its notifiers' polls then re-check by themselves);
    /// HTTP connections close when the last clone is dropped.
    pub async fn close(&self) {
        let watch = self
            .inner
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        if let Some(watch) = watch {
            watch.stop().await;
        }
        tracing::debug!(orders_index = %self.inner.orders, "opensearch storage closed");
    }

    // ---- shared plumbing -------------------------------------------------------------------

    fn http(&self) -> &Http {
        &self.inner.http
    }

    fn visibility(&self) -> &Visibility {
        &self.inner.visibility
    }

    /// Refreshes the orders index when `fresh` asks for it (one refresh at a time; those who
    /// waited for it usually need none of their own).
    async fn make_fresh(&self, fresh: Fresh) -> Result<(), StoreError> {
        self.refresh_if(self.visibility(), &self.inner.orders, fresh)
            .await
    }

    /// Refreshes the requests index when `fresh` asks for it.
    async fn make_requests_fresh(&self, fresh: Fresh) -> Result<(), StoreError> {
        self.refresh_if(&self.inner.requests_visibility, &self.inner.requests, fresh)
            .await
    }

    /// Refreshes the agents index when `fresh` asks for it.
    async fn make_agents_fresh(&self, fresh: Fresh) -> Result<(), StoreError> {
        self.refresh_if(&self.inner.agents_visibility, &self.inner.agents, fresh)
            .await
    }

    async fn refresh_if(
        &self,
        v: &Visibility,
        index: &str,
        fresh: Fresh,
    ) -> Result<(), StoreError> {
        let ask = v.ask(fresh);
        if !v.needs(&ask) {
            return Ok(());
        }
        let _one_at_a_time = v.refreshing.lock().await;
        if !v.needs(&ask) {
            return Ok(());
        }
        let (covers, started) = v.refresh_starts();
        self.http()
            .ok(Method::Post, &format!("/{index}/_refresh"), &[], None)
            .await?;
        v.refreshed(covers, started);
        Ok(())
    }

    /// Records a finished write of `orders` (read through `_mget` until a refresh covers it).
    async fn wrote<'a>(&self, orders: impl IntoIterator<Item = &'a Order>) {
        let v = self.visibility();
        let n = v.wrote();
        v.remember(n, orders);
        if v.recent_len() > RECENT_CAP
            && let Err(e) = self.make_fresh(Fresh::Always).await
        {
            tracing::warn!(error = %e, "refresh after many writes failed");
        }
    }

    /// Realtime reads of orders by id (missing ones left out).
    async fn mget(&self, ids: &[String]) -> Result<Vec<Versioned>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_WINDOW) {
            let body = self
                .http()
                .ok(
                    Method::Post,
                    &format!("/{}/_mget", self.inner.orders),
                    &[],
                    Some(json!({"ids": chunk})),
                )
                .await?;
            let docs = body["docs"]
                .as_array()
                .ok_or_else(|| corrupt(format!("_mget answer without docs: {body}")))?;
            for doc in docs {
                if doc["found"] == true {
                    out.push(Versioned::read(doc)?);
                } else if doc.get("error").is_some() {
                    let (kind, reason) = error_of(doc);
                    return Err(StoreError::Unavailable(format!(
                        "_mget of {} failed: {kind}: {reason}",
                        doc["_id"]
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The answer to a search body on the orders index (hits, aggregations).
    async fn search_answer(&self, body: Value) -> Result<Value, StoreError> {
        Ok(self
            .http()
            .ok(
                Method::Post,
                &format!("/{}/_search", self.inner.orders),
                &[],
                Some(body),
            )
            .await?)
    }

    /// The hits of a search body on the orders index.
    async fn search(&self, body: Value) -> Result<Vec<Value>, StoreError> {
        search_hits(self.search_answer(body).await?)
    }
}

/// The `hits.hits` of a search answer.
fn search_hits(mut answer: Value) -> Result<Vec<Value>, StoreError> {
    match answer["hits"]["hits"].take() {
        Value::Array(hits) => Ok(hits),
        _ => Err(corrupt(format!("search answer without hits: {answer}"))),
    }
}

/// An order as stored, with the document id and version a conditional write must name.
///
/// The document id is the order id for every order this service writes; documents another
/// writer (the Wazuh plugin) stored under other ids are still claimed and maintained, through
/// the id they have.
#[derive(Debug, Clone)]
struct Versioned {
    id: String,
    order: Order,
    seq_no: i64,
    primary_term: i64,
}

impl Versioned {
    /// From a `GET`/`_mget` doc or a search hit with `seq_no_primary_term`.
    fn read(doc: &Value) -> Result<Self, StoreError> {
        let id = doc["_id"]
            .as_str()
            .ok_or_else(|| corrupt(format!("document without _id: {doc}")))?;
        let order: Order = serde_json::from_value(doc["_source"].clone())
            .map_err(|e| corrupt(format!("order document {id} does not decode: {e}")))?;
        let (Some(seq_no), Some(primary_term)) =
            (doc["_seq_no"].as_i64(), doc["_primary_term"].as_i64())
        else {
            return Err(corrupt(format!("document {id} came without its version")));
        };
        Ok(Self {
            id: id.to_owned(),
            order,
            seq_no,
            primary_term,
        })
    }

    /// The change of this order into `next`, conditional on this version.
    fn change(&self, next: Order) -> Change {
        Change {
            id: self.id.clone(),
            next,
            seq_no: self.seq_no,
            primary_term: self.primary_term,
        }
    }
}

/// A write of `next` over document `id`, only if it is still at `seq_no`/`primary_term`.
#[derive(Debug)]
struct Change {
    id: String,
    next: Order,
    seq_no: i64,
    primary_term: i64,
}

fn doc_id(id: &OrderId) -> String {
    id.to_string()
}
