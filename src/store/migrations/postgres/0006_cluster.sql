-- The cluster's own rows. Each replica records a heartbeat (on the database's clock, in
-- milliseconds): those fresher than a lease are the replicas seen. One replica at a time holds
-- the facts lease, the one row of `cluster_facts_lease`, and alone exports the facts that
-- belong to the cluster (revenue, the shared queue's depth, replicas seen), so that they are
-- not counted once per replica; when it stops renewing, another takes the row over.
CREATE TABLE cluster_replicas (
    replica_id TEXT PRIMARY KEY,
    seen_at    BIGINT NOT NULL
);
CREATE TABLE cluster_facts_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    replica_id TEXT,
    expires_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO cluster_facts_lease (id) VALUES (1);
