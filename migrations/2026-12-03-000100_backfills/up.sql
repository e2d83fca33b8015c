-- Backfills (docs/backfill.md): existing rows of a watched table sent as `<noun>.backfilled`
-- events, read in primary-key chunks between watermarks. One row per backfill; the daemon
-- that streams capture works through the running ones and stores its progress here once a
-- chunk's events are delivered or durably queued, so a restart repeats at most one chunk.
CREATE TABLE walhook.backfill_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    relid oid NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    -- NULL: every subscription whose events match the table's.
    subscription_id uuid REFERENCES walhook.subscriptions (id) ON DELETE CASCADE,
    filter jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    -- The primary key of the last row read, as a JSON object (NULL: from the start).
    last_key jsonb,
    rows_sent bigint NOT NULL DEFAULT 0,
    estimated_total bigint NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX backfill_jobs_running ON walhook.backfill_jobs (created_at) WHERE state = 'running';
