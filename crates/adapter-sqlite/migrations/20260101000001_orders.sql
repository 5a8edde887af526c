-- The orders stream. `document` is the order exactly as the domain serialises it (SPEC §2);
-- every other column is a projection of it, kept for filtering and indexing, and rewritten with
-- it on every change. `revision` grows by one on every change: writes are conditional on it.
CREATE TABLE orders (
    order_id           TEXT    NOT NULL PRIMARY KEY,
    request_id         TEXT    NOT NULL,
    agent_id           TEXT,             -- NULL for server orders
    target_type        TEXT    NOT NULL,
    target_id          TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    created_ms         INTEGER NOT NULL, -- @timestamp, Unix milliseconds
    deadline_ms        INTEGER NOT NULL, -- delivery_timestamp
    available_ms       INTEGER NOT NULL, -- not_before, or @timestamp
    redeliver_ms       INTEGER,
    result_deadline_ms INTEGER,
    finished_ms        INTEGER,
    revision           INTEGER NOT NULL DEFAULT 0,
    document           TEXT    NOT NULL
);

-- claim: an agent's pending orders, oldest first ...
CREATE INDEX orders_claim ON orders (agent_id, created_ms, order_id) WHERE status = 'pending';
-- ... and its sent orders by redelivery time, so a poll never walks the orders it already has.
CREATE INDEX orders_redeliver ON orders (agent_id, redeliver_ms) WHERE status = 'sent';
-- expiry: pending orders by delivery deadline.
CREATE INDEX orders_expiry ON orders (deadline_ms, order_id) WHERE status = 'pending';
-- give-up: delivered orders by result deadline.
CREATE INDEX orders_result_deadline ON orders (result_deadline_ms, order_id)
    WHERE result_deadline_ms IS NOT NULL;
-- retention: finished orders by finish time.
CREATE INDEX orders_finished ON orders (finished_ms, order_id) WHERE finished_ms IS NOT NULL;
-- progress, delete_request and the orders of one request in query order.
CREATE INDEX orders_request ON orders (request_id, created_ms, order_id);
-- the orders of one agent in query order.
CREATE INDEX orders_agent ON orders (agent_id, created_ms, order_id);
-- query order: (@timestamp, order_id).
CREATE INDEX orders_created ON orders (created_ms, order_id);

-- Finished orders moved out of the stream by retention in archive mode.
CREATE TABLE orders_archive (
    order_id           TEXT    NOT NULL PRIMARY KEY,
    request_id         TEXT    NOT NULL,
    agent_id           TEXT,
    target_type        TEXT    NOT NULL,
    target_id          TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    created_ms         INTEGER NOT NULL,
    deadline_ms        INTEGER NOT NULL,
    available_ms       INTEGER NOT NULL,
    redeliver_ms       INTEGER,
    result_deadline_ms INTEGER,
    finished_ms        INTEGER,
    revision           INTEGER NOT NULL DEFAULT 0,
    document           TEXT    NOT NULL
);
