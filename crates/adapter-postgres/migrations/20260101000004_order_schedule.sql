-- next_due: an agent's pending orders by the time they become available (`not_before`) and its
-- sent orders by redelivery time, so a long-poll finds the next scheduled start or redelivery
-- with one index seek each, however many orders the agent has.
CREATE INDEX orders_pending_by_agent_available ON orders (agent_id, available_at)
    WHERE status = 'pending';
CREATE INDEX orders_sent_by_agent_redeliver ON orders (agent_id, redeliver_at)
    WHERE status = 'sent';
-- cancel_pending: one request's pending orders, oldest first, without walking the ones that
-- already moved on.
CREATE INDEX orders_pending_by_request ON orders (request_id, created_at, order_id)
    WHERE status = 'pending';
