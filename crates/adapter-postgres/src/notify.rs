//! [`PostgresNotifier`]: wakes long-polls on every instance through `LISTEN/NOTIFY`.
//!
//! `notify` wakes this instance's polls at once through its [`WakeHub`] and sends the consumers' keys
//! on channel [`CHANNEL`]; a background task holds a `LISTEN` connection and wakes the local
//! polls of every consumer (agent or component) named in a notification from another instance. Notifications are not
//! queued for a listener that is disconnected, so after the task reconnects it wakes every
//! waiting poll (they re-check storage), and polls also re-check every
//! [`RECHECK_INTERVAL`] as a last resort (a connection that dies silently).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cm_domain::Consumer;
use cm_ports::{Consumers, Notifier, StoreError, Subscription, WakeHub};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::convert_sqlx_err;

/// The notification channel every instance listens on.
pub const CHANNEL: &str = "cm_orders";
/// How often a waiting poll re-checks storage even without a notification.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Longest payload sent, in bytes (PostgreSQL refuses 8000 and more).
const MAX_PAYLOAD: usize = 7_900;
/// Beyond this many payloads for one call, one "wake every poll" payload is sent instead.
const MAX_PAYLOADS: usize = 64;
/// The payload that wakes every poll.
const WAKE_ALL: &str = "*";
/// Reconnection delays of the listener: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
// Short: while the listener is down, polls on this instance only hear of other instances' orders
// at their 30 s re-check; a reconnect attempt every 2 s costs the database next to nothing.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The payloads that tell other instances about `consumers`: `<instance> <key>,<key>,…` (the
/// consumers' keys, `agent:<id>` or `server:<component>`, which never contain spaces or commas),
/// each under [`MAX_PAYLOAD`] bytes, or one `<instance> *` when there would be more than
/// [`MAX_PAYLOADS`].
pub(crate) fn payloads(instance: &str, consumers: &[Consumer]) -> Vec<String> {
    let keys: BTreeSet<String> = consumers.iter().map(Consumer::key).collect();
    let unique = keys.iter().map(String::as_str);
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for id in unique {
        if !current.is_empty() && current.len() + 1 + id.len() > MAX_PAYLOAD {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(instance);
            current.push(' ');
        } else {
            current.push(',');
        }
        current.push_str(id);
        if out.len() >= MAX_PAYLOADS {
            return vec![format!("{instance} {WAKE_ALL}")];
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a received payload asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wake<'a> {
    Nothing,
    All,
    Agents(Vec<&'a str>),
}

/// Reads a payload sent by [`payloads`]; our own (already woken locally) ask for nothing, and
/// so does anything unreadable.
fn parse_payload<'a>(instance: &str, payload: &'a str) -> Wake<'a> {
    let Some((sender, ids)) = payload.split_once(' ') else {
        return Wake::Nothing;
    };
    if sender == instance {
        Wake::Nothing
    } else if ids == WAKE_ALL {
        Wake::All
    } else {
        Wake::Agents(ids.split(',').filter(|s| !s.is_empty()).collect())
    }
}

/// Wakes long-polls on this and every other instance sharing the database.
///
/// Dropping it stops its listener task.
pub struct PostgresNotifier {
    instance: String,
    hub: WakeHub,
    pool: PgPool,
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for PostgresNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresNotifier")
            .field("instance", &self.instance)
            .field("agents_waiting", &self.hub.agents_waiting())
            .finish_non_exhaustive()
    }
}

impl PostgresNotifier {
    /// Starts listening with `listener_pool` (one connection, for `LISTEN` only) and sends
    /// with `pool`. Returns once `LISTEN` is in place, so nothing sent after this returns is
    /// missed.
    pub(crate) async fn start(pool: PgPool, listener_pool: PgPool) -> Result<Self, StoreError> {
        let instance = Uuid::now_v7().simple().to_string();
        let hub = WakeHub::new();
        let listener = listen(&listener_pool).await.map_err(convert_sqlx_err)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run_listener(
            listener,
            listener_pool,
            hub.clone(),
            instance.clone(),
            stopped,
        ));
        Ok(Self {
            instance,
            hub,
            pool,
            task: Some(task),
            stop: Some(stop),
        })
    }

    /// Stops the listener task and waits for it to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PostgresNotifier {
    fn drop(&mut self) {
        // Dropping `stop` tells the task to end; it closes its connection on the way out.
        drop(self.stop.take());
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Receives notifications until told to stop, reconnecting with backoff when the connection
/// fails. Each (re)connection is followed by a wake-up of every poll: whatever was sent while
/// the connection was down is lost, so waiting polls look at storage themselves.
async fn run_listener(
    listener: PgListener,
    pool: PgPool,
    hub: WakeHub,
    instance: String,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut listener = Some(listener);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let Some(current) = listener.as_mut() else {
            // Disconnected: wait, then try again.
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(backoff) => {}
            }
            match listen(&pool).await {
                Ok(l) => {
                    tracing::info!(channel = CHANNEL, "notification listener reconnected");
                    listener = Some(l);
                    backoff = BACKOFF_FIRST;
                    hub.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "notification listener cannot reconnect");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        let received = tokio::select! {
            _ = &mut stopped => break,
            r = current.try_recv() => r,
        };
        match received {
            Ok(Some(notification)) => deliver(&hub, &instance, &notification),
            // The connection was lost and sqlx re-established it (with `LISTEN`) already.
            Ok(None) => {
                tracing::info!(channel = CHANNEL, "notification listener reconnected");
                hub.wake_all();
            }
            Err(error) => {
                tracing::warn!(%error, "notification listener lost its connection");
                listener = None;
                // Whatever was sent from now until we are back is lost: waiting polls will
                // be woken on reconnection.
            }
        }
    }
    drop(listener);
    pool.close().await;
}

fn deliver(hub: &WakeHub, instance: &str, notification: &PgNotification) {
    match parse_payload(instance, notification.payload()) {
        Wake::Nothing => {}
        Wake::All => hub.wake_all(),
        Wake::Agents(ids) => {
            let consumers: Vec<Consumer> = ids.into_iter().filter_map(Consumer::from_key).collect();
            hub.wake(&consumers);
        }
    }
}

#[async_trait]
impl Notifier for PostgresNotifier {
    #[tracing::instrument(skip(self, consumers), fields(consumers = consumers.len()))]
    async fn notify(&self, consumers: &[Consumer]) -> Result<(), StoreError> {
        self.hub.wake(consumers);
        let payloads = payloads(&self.instance, consumers);
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(convert_sqlx_err)
    }

    fn subscribe(&self, consumers: &Consumers) -> Subscription {
        self.hub.subscribe(consumers)
    }

    fn recheck_interval(&self) -> Option<Duration> {
        Some(RECHECK_INTERVAL)
    }

    fn polls_waiting(&self, consumer: &Consumer) -> usize {
        self.hub.polls_waiting(consumer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use cm_domain::AgentId;

    fn ids(n: usize) -> Vec<Consumer> {
        (0..n)
            .map(|i| Consumer::Agent(AgentId::parse(&format!("agent-{i:06}"), "id").unwrap()))
            .collect()
    }

    #[test]
    fn payloads_stay_under_the_limit_and_name_every_agent_once() {
        let agents = ids(1_000);
        let mut twice = agents.clone();
        twice.extend(agents.iter().cloned());
        let sent = payloads("me", &twice);
        assert!(sent.len() > 1);
        let mut seen = Vec::new();
        for p in &sent {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            let Wake::Agents(got) = parse_payload("other", p) else {
                panic!("{p}")
            };
            seen.extend(got.into_iter().map(str::to_owned));
        }
        let want: Vec<String> = agents.iter().map(Consumer::key).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_huge_fan_out_becomes_one_wake_all() {
        let sent = payloads("me", &ids(100_000));
        assert_eq!(sent, vec!["me *".to_owned()]);
        assert_eq!(parse_payload("other", &sent[0]), Wake::All);
    }

    #[test]
    fn nothing_to_say_sends_nothing() {
        assert!(payloads("me", &[]).is_empty());
    }

    #[test]
    fn own_and_unreadable_payloads_wake_nobody() {
        assert_eq!(parse_payload("me", "me a1,a2"), Wake::Nothing);
        assert_eq!(parse_payload("me", "garbage"), Wake::Nothing);
        assert_eq!(
            parse_payload("me", "you a1,a2"),
            Wake::Agents(vec!["a1", "a2"])
        );
    }
}
