-- Cancel requests: a replica asked to cancel a RUNNING execution that another replica runs;
-- the owner learns of it when it renews its leases, and stops the agent.
ALTER TABLE executions ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
