-- Heartbeat rows: one per running `walhook run`, written every ops.heartbeat_interval_ms
-- (one UPSERT), deleted on a clean stop. A row older than three of its own intervals belongs
-- to a dead instance: `walhook status` ignores it and the next heartbeat of any instance
-- deletes it. What only a running daemon knows (its role, what it acknowledged, its rates)
-- is read from here by `walhook status`, which works with no daemon running.
CREATE TABLE walhook.instances (
    id uuid PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    capture_mode text NOT NULL,
    role text NOT NULL,
    role_since timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    heartbeat_interval_ms integer NOT NULL CHECK (heartbeat_interval_ms > 0),
    acknowledged_lsn pg_lsn,
    acknowledged_commit_time timestamptz,
    events_per_second double precision NOT NULL DEFAULT 0,
    deliveries_per_second double precision NOT NULL DEFAULT 0,
    retained_wal_over_limit boolean NOT NULL DEFAULT false
);
