-- Server components consume the orders of `server` targets (docs/delivery.md). Their claims and
-- next_due read these partial indexes, the twins of the agents' `orders_claim`,
-- `orders_redeliver` and `orders_available`, keyed by the component (`target_id`).
CREATE INDEX orders_claim_server ON orders (target_id, created_ms, order_id)
    WHERE status = 'pending' AND target_type = 'server';
CREATE INDEX orders_redeliver_server ON orders (target_id, redeliver_ms)
    WHERE status = 'sent' AND target_type = 'server';
CREATE INDEX orders_available_server ON orders (target_id, available_ms)
    WHERE status = 'pending' AND target_type = 'server';

-- The registry of server components: each one's name and the hash of its key (lowercase hex
-- SHA-256; the key itself is never stored).
CREATE TABLE components (
    name     TEXT NOT NULL PRIMARY KEY,
    key_hash TEXT NOT NULL
) WITHOUT ROWID;
