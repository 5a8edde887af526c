-- Server components consume the orders of `server` targets (docs/delivery.md). Their claims and
-- next_due read these partial indexes, the twins of the agents' ones, keyed by the component
-- (`target_id`).
CREATE INDEX orders_open_by_server ON orders (target_id, created_at, order_id)
    WHERE status IN ('pending', 'sent') AND target_type = 'server';
CREATE INDEX orders_pending_by_server_available ON orders (target_id, available_at)
    WHERE status = 'pending' AND target_type = 'server';
CREATE INDEX orders_sent_by_server_redeliver ON orders (target_id, redeliver_at)
    WHERE status = 'sent' AND target_type = 'server';

-- The registry of server components: each one's name and the hash of its key (lowercase hex
-- SHA-256; the key itself is never stored). Names compare byte-wise, like agent ids.
CREATE TABLE components (
    name       text        COLLATE "C" PRIMARY KEY,
    key_hash   text        NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    updated_at timestamptz NOT NULL DEFAULT now()
);
