-- Retention deletes finished executions oldest end first; the revenue of deleted COMPLETED
-- executions is kept per agent here, added to atomically by whichever replica deletes them.
CREATE INDEX executions_by_finished ON executions (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE retired_revenue (
    agent_id TEXT PRIMARY KEY,
    wei      NUMERIC NOT NULL
);
