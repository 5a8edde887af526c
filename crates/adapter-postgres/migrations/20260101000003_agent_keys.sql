-- The hash of each agent's key (lowercase hex SHA-256; the key itself is never stored). It is a
-- column of the agent's row so that re-registering (an upsert, which rewrites only `groups`)
-- keeps it and deleting the agent deletes it; an agent registered again after a delete starts
-- without one. Adding a nullable column without a default rewrites nothing.
ALTER TABLE agents ADD COLUMN key_hash text
    CHECK (key_hash ~ '^[0-9a-f]{64}$');
