-- Agents: the definition is the agent's JSON, as the API shows it.
CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    from_config INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

-- Executions: `agent` is a snapshot of the agent's definition at submission.
-- Timestamps are epoch milliseconds. Wei amounts are decimal strings (they exceed 64 bits).
CREATE TABLE executions (
    key               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    agent_id          TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    status            TEXT NOT NULL,
    agent             TEXT NOT NULL,
    price_wei         TEXT NOT NULL,
    input             TEXT NOT NULL,
    output            TEXT,
    error_kind        TEXT,
    error_message     TEXT,
    exit_code         INTEGER,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    peak_memory_bytes INTEGER,
    peak_cpu_percent  REAL,
    log_lines         INTEGER NOT NULL DEFAULT 0,
    log_lines_dropped INTEGER NOT NULL DEFAULT 0,
    last_seq          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX executions_by_agent ON executions (agent_id, status, key);
CREATE INDEX executions_by_status ON executions (status, key);
CREATE INDEX executions_by_user ON executions (user_id, key);

-- The per-execution event stream: seq is 1, 2, 3, ... without gaps.
CREATE TABLE events (
    execution_key INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,
    timestamp     INTEGER NOT NULL,
    PRIMARY KEY (execution_key, seq)
) WITHOUT ROWID;
