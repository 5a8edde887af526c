-- The agents registry. Ids and group names compare byte-wise (COLLATE "C"), the order the
-- domain's `AgentId` sorts in, so paging by id agrees with every other backend.
CREATE TABLE agents (
    agent_id   text        COLLATE "C" PRIMARY KEY,
    -- The agent's groups in the order they were given: a JSON array of strings.
    groups     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Group membership, one row per (group, agent): the primary key pages a group's members by id.
CREATE TABLE agent_groups (
    group_name text COLLATE "C" NOT NULL,
    agent_id   text COLLATE "C" NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    PRIMARY KEY (group_name, agent_id)
);

-- Replacing or deleting one agent's memberships.
CREATE INDEX agent_groups_by_agent ON agent_groups (agent_id);
