-- The PostgreSQL schema: the same tables as the embedded store's, with PostgreSQL's types.
-- JSON documents stay text, exactly as they were submitted (big numbers, key order).
-- Timestamps are epoch milliseconds. Wei amounts are decimal strings (they exceed 64 bits).

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    from_config BOOLEAN NOT NULL DEFAULT false,
    created_at  BIGINT NOT NULL
);

-- `last_seq` is the execution's event counter: an append raises it by the number of its
-- events in the transaction that inserts them, which also locks the row, so seqs are assigned
-- in the database, gapless, whoever writes. Ownership by a replica (owner, lease epoch) will
-- be further columns of this row, checked by the same statements.
CREATE TABLE executions (
    key               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    peak_memory_bytes BIGINT,
    peak_cpu_percent  DOUBLE PRECISION,
    log_lines         BIGINT NOT NULL DEFAULT 0,
    log_lines_dropped BIGINT NOT NULL DEFAULT 0,
    last_seq          BIGINT NOT NULL DEFAULT 0,
    process_group     INTEGER,
    process_started   BIGINT,
    process_cgroup    TEXT
);
CREATE INDEX executions_by_agent ON executions (agent_id, status, id);
CREATE INDEX executions_by_user ON executions (user_id, id);
CREATE INDEX executions_by_status_id ON executions (status, id);

-- The per-execution event stream: seq is 1, 2, 3, ... without gaps.
CREATE TABLE events (
    execution_key BIGINT NOT NULL REFERENCES executions (key) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,
    timestamp     BIGINT NOT NULL,
    PRIMARY KEY (execution_key, seq)
);
