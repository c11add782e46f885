-- The cgroup that holds every process of a running process agent (when the runtime contains
-- executions in cgroups), so that after a crash the restarted runtime kills all of them, also
-- those that left the agent's process group and those whose group leader has exited.
ALTER TABLE executions ADD COLUMN process_cgroup TEXT;
