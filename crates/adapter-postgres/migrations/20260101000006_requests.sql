-- Request records (docs/requests.md): one per command of a submit, written (and committed)
-- before its orders. `doc` is the record as the domain serialises it; every other column is a
-- projection of it, rewritten with it on every change. `revision` is the record's own revision:
-- replacements are conditional on it.
CREATE TABLE requests (
    request_id  uuid        PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    state       text        NOT NULL CHECK (state IN ('writing', 'scheduled', 'running',
                    'paused', 'completed', 'cancelled', 'stopped', 'aborted')),
    action      text        NOT NULL,
    user_name   text,
    source      text        NOT NULL,
    target_type text        NOT NULL,
    target_id   text        NOT NULL,
    -- Whether the counts are frozen: nothing more happens to the request.
    settled     boolean     NOT NULL DEFAULT false,
    finished_at timestamptz,
    revision    bigint      NOT NULL,
    doc         jsonb       NOT NULL
);

-- The listing: newest first, every filter applied on the way ...
CREATE INDEX requests_newest_first ON requests (created_at DESC, request_id DESC);
-- ... and the state filter (the one the console uses most) without walking other states.
CREATE INDEX requests_by_state ON requests (state, created_at DESC, request_id DESC);
-- The scheduler's work list: records not settled yet, oldest first.
CREATE INDEX requests_unsettled ON requests (created_at, request_id) WHERE NOT settled;
-- Retention: settled records by finish time.
CREATE INDEX requests_settled_by_finish ON requests (finished_at, request_id) WHERE settled;

-- Rate control: an order may be held (neither deliverable nor expirable until released) and
-- has a position in its request. Existing orders are neither held nor positioned; adding a
-- column with a constant default rewrites nothing.
ALTER TABLE orders ADD COLUMN held boolean NOT NULL DEFAULT false;
ALTER TABLE orders ADD COLUMN position bigint;

-- release_held: a request's held orders, lowest position first.
CREATE INDEX orders_held_by_position ON orders (request_id, position, order_id)
    WHERE status = 'pending' AND held;

-- Claims, next_due and expiry never see held orders: their partial indexes leave them out, so a
-- rollout holding most of its orders costs a poll and the expiry drain nothing.
DROP INDEX orders_open_by_agent;
CREATE INDEX orders_open_by_agent ON orders (agent_id, created_at, order_id)
    WHERE status IN ('pending', 'sent') AND NOT held;
DROP INDEX orders_open_by_server;
CREATE INDEX orders_open_by_server ON orders (target_id, created_at, order_id)
    WHERE status IN ('pending', 'sent') AND NOT held AND target_type = 'server';
DROP INDEX orders_pending_by_deadline;
CREATE INDEX orders_pending_by_deadline ON orders (deadline)
    WHERE status = 'pending' AND NOT held;
DROP INDEX orders_pending_by_agent_available;
CREATE INDEX orders_pending_by_agent_available ON orders (agent_id, available_at)
    WHERE status = 'pending' AND NOT held;
DROP INDEX orders_pending_by_server_available;
CREATE INDEX orders_pending_by_server_available ON orders (target_id, available_at)
    WHERE status = 'pending' AND NOT held AND target_type = 'server';
