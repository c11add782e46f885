-- The replica that runs an execution, shown by the API; null while it is PENDING.
ALTER TABLE executions ADD COLUMN replica_id TEXT;
