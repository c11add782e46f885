-- Leases: the replica running an execution (replica_id) holds it for an epoch until an
-- expiry on the database's clock (milliseconds), renewed while it runs. A new owner raises
-- the epoch; writes checked against the old one are refused.
ALTER TABLE executions ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN lease_expires_at BIGINT;
CREATE INDEX executions_running_leases ON executions (lease_expires_at) WHERE status = 'RUNNING';
