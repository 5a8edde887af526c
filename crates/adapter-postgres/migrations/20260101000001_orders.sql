-- The orders stream. `doc` is the order document exactly as the domain serialises it (the
-- Wazuh layout, SPEC §2); every other column is a projection of it, rewritten together with it
-- on every change, so the hot queries below can use indexes instead of reading documents.
CREATE TABLE orders (
    order_id        uuid        PRIMARY KEY,
    request_id      uuid        NOT NULL,
    -- NULL for server targets: those are never handed to an agent.
    agent_id        text        COLLATE "C",
    target_type     text        NOT NULL,
    target_id       text        NOT NULL,
    action          text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('pending', 'sent', 'in_progress', 'success', 'failure')),
    -- `@timestamp`
    created_at      timestamptz NOT NULL,
    -- `delivery_timestamp`
    deadline        timestamptz NOT NULL,
    -- `not_before`, or `@timestamp` when there is none
    available_at    timestamptz NOT NULL,
    redeliver_at    timestamptz,
    result_deadline timestamptz,
    finished_at     timestamptz,
    doc             jsonb       NOT NULL
);

-- Claims: an agent's open orders, oldest first (`Order::is_deliverable` narrows further).
CREATE INDEX orders_open_by_agent ON orders (agent_id, created_at, order_id)
    WHERE status IN ('pending', 'sent');
-- Expiry: pending orders by delivery deadline.
CREATE INDEX orders_pending_by_deadline ON orders (deadline)
    WHERE status = 'pending';
-- Giving up: delivered orders by result deadline.
CREATE INDEX orders_delivered_by_result_deadline ON orders (result_deadline)
    WHERE status IN ('sent', 'in_progress');
-- Retention: finished orders by finish time.
CREATE INDEX orders_finished_by_time ON orders (finished_at)
    WHERE status IN ('success', 'failure');
-- Request progress (counts per status) and request-scoped listings and deletes.
CREATE INDEX orders_by_request ON orders (request_id, status);
-- The query order of `GET /api/v1/orders` and its cursor.
CREATE INDEX orders_by_time ON orders (created_at, order_id);
-- One agent's orders in query order (`GET /api/v1/orders?agent_id=`).
CREATE INDEX orders_by_agent ON orders (agent_id, created_at, order_id);

-- Finished orders moved out of the stream by retention in archive mode.
CREATE TABLE orders_archive (
    order_id    uuid        PRIMARY KEY,
    request_id  uuid        NOT NULL,
    agent_id    text        COLLATE "C",
    status      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz,
    archived_at timestamptz NOT NULL DEFAULT now(),
    doc         jsonb       NOT NULL
);

CREATE INDEX orders_archive_by_request ON orders_archive (request_id);
