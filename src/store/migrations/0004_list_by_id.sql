-- Executions are listed newest first by id (a ULID, ordered by creation time), and the page
-- cursor is an id: the row key stays inside the store.
DROP INDEX executions_by_agent;
DROP INDEX executions_by_user;
CREATE INDEX executions_by_agent ON executions (agent_id, status, id);
CREATE INDEX executions_by_user ON executions (user_id, id);
CREATE INDEX executions_by_status_id ON executions (status, id);
