-- Retention deletes finished executions oldest end first; the revenue of deleted COMPLETED
-- executions is kept per agent here (a decimal string, like prices), so revenue never drops.
CREATE INDEX executions_by_finished ON executions (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE retired_revenue (
    agent_id TEXT PRIMARY KEY,
    wei      TEXT NOT NULL
);
