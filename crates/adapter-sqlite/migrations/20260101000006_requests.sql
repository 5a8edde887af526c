-- Request records (docs/requests.md): one per command of a submit, written before its orders.
-- `document` is the record as the domain serialises it; every other column is a projection of
-- it, rewritten with it on every change. `revision` is the record's own revision: replacements
-- are conditional on it.
CREATE TABLE requests (
    request_id  TEXT    NOT NULL PRIMARY KEY,
    created_ms  INTEGER NOT NULL, -- created_at, Unix milliseconds
    state       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    user_name   TEXT,
    source      TEXT    NOT NULL,
    target_type TEXT    NOT NULL,
    target_id   TEXT    NOT NULL,
    settled     INTEGER NOT NULL DEFAULT 0, -- 1 once the counts are frozen
    finished_ms INTEGER,
    revision    INTEGER NOT NULL,
    document    TEXT    NOT NULL
);

-- The listing: newest first, every filter applied on the way ...
CREATE INDEX requests_created ON requests (created_ms DESC, request_id DESC);
-- ... and the state filter (the one the console uses most) without walking other states.
CREATE INDEX requests_state ON requests (state, created_ms DESC, request_id DESC);
-- The scheduler's work list: records not settled yet, oldest first.
CREATE INDEX requests_unsettled ON requests (created_ms, request_id) WHERE settled = 0;
-- Retention: settled records by finish time.
CREATE INDEX requests_settled ON requests (finished_ms, request_id) WHERE settled = 1;

-- Rate control: an order may be held (not deliverable, not expirable until released) and has a
-- position in its request. Existing orders are neither held nor positioned.
ALTER TABLE orders ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN position INTEGER;

-- release_held: a request's held orders, lowest position first.
CREATE INDEX orders_held ON orders (request_id, position, order_id)
    WHERE status = 'pending' AND held = 1;

-- Claims, next_due and expiry never see held orders: their partial indexes leave them out, so
-- a rollout holding most of its orders costs a poll nothing. The indexes that name a request
-- carry `request_id`, so the request gate of claims and next_due is answered from the index
-- (and a lookup of the record by its primary key).
DROP INDEX orders_claim;
CREATE INDEX orders_claim ON orders (agent_id, created_ms, order_id)
    WHERE status = 'pending' AND held = 0;
DROP INDEX orders_expiry;
CREATE INDEX orders_expiry ON orders (deadline_ms, order_id)
    WHERE status = 'pending' AND held = 0;
DROP INDEX orders_available;
CREATE INDEX orders_available ON orders (agent_id, available_ms, request_id)
    WHERE status = 'pending' AND held = 0;
DROP INDEX orders_redeliver;
CREATE INDEX orders_redeliver ON orders (agent_id, redeliver_ms, request_id)
    WHERE status = 'sent';
DROP INDEX orders_claim_server;
CREATE INDEX orders_claim_server ON orders (target_id, created_ms, order_id)
    WHERE status = 'pending' AND held = 0 AND target_type = 'server';
DROP INDEX orders_available_server;
-- The parentheses matter: SQLite counts a column of a partial index's WHERE as covered by the
-- index when the WHERE fixes it with `=`, but looks only at the two sides of each `AND`, so
-- with three terms grouped as `(a AND b) AND c` it would miss `a` and `b`, and next_due would
-- read the table for every row.
CREATE INDEX orders_available_server ON orders (target_id, available_ms, request_id)
    WHERE status = 'pending' AND (held = 0 AND target_type = 'server');
DROP INDEX orders_redeliver_server;
CREATE INDEX orders_redeliver_server ON orders (target_id, redeliver_ms, request_id)
    WHERE status = 'sent' AND target_type = 'server';
