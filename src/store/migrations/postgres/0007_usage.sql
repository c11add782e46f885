-- What an execution's telemetry reported it used (the `Usage` JSON), recorded with its end,
-- and the limit named by a `budget_exceeded` error.
ALTER TABLE executions ADD COLUMN usage TEXT;
ALTER TABLE executions ADD COLUMN error_budget TEXT;
