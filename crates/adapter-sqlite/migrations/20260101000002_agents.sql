-- The agents registry. `document` is the agent as the domain serialises it (id and groups in
-- their order); group membership is also kept in `agent_groups` so that a group of any size is
-- counted and paged in id order through its primary key.
CREATE TABLE agents (
    agent_id TEXT NOT NULL PRIMARY KEY,
    document TEXT NOT NULL
);

CREATE TABLE agent_groups (
    group_name TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    PRIMARY KEY (group_name, agent_id)
) WITHOUT ROWID;

-- removing or regrouping one agent.
CREATE INDEX agent_groups_agent ON agent_groups (agent_id);
