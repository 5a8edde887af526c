-- The hash of each agent's key (lowercase hex SHA-256; the key itself is never stored). It is a
-- column of the agent's row so that re-registering (an upsert, which rewrites only `document`)
-- keeps it and deleting the agent deletes it; an agent registered again after a delete starts
-- without one.
ALTER TABLE agents ADD COLUMN key_hash TEXT;
