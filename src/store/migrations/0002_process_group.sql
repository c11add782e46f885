-- The process group of a running process agent and its leader's start time (clock ticks since
-- boot), so that after a crash the restarted runtime stops what was left running, and only that.
ALTER TABLE executions ADD COLUMN process_group INTEGER;
ALTER TABLE executions ADD COLUMN process_started INTEGER;
