-- next_due: an agent's pending orders by the time they become available (`not_before`), so a
-- long-poll finds the next scheduled start with one index seek; redeliveries come from
-- `orders_redeliver` (agent_id, redeliver_ms) WHERE status = 'sent'.
CREATE INDEX orders_available ON orders (agent_id, available_ms) WHERE status = 'pending';
-- cancel_pending: one request's pending orders, oldest first, without walking its finished ones.
CREATE INDEX orders_request_pending ON orders (request_id, created_ms, order_id)
    WHERE status = 'pending';
