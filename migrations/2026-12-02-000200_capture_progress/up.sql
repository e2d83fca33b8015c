-- walhook's own record of its replication slot, so a slot that was invalidated or has
-- disappeared (failover, restore, pg_drop_replication_slot) is noticed instead of being
-- silently re-created from "now". Written by the streaming instance at most about once a
-- second, and by `walhook slot reset`.
CREATE TABLE walhook.capture_progress (
    slot_name text PRIMARY KEY,
    -- Where and when walhook created (or first adopted) the slot.
    created_lsn pg_lsn NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The last acknowledged position (every event at or below it delivered or durably
    -- queued) and the commit time of the transaction ending there.
    acknowledged_lsn pg_lsn NOT NULL,
    acknowledged_commit_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Gaps accepted by `walhook slot reset`: changes between from_lsn/from_time and
-- to_lsn/to_time of these tables were never captured.
CREATE TABLE walhook.gaps (
    id bigserial PRIMARY KEY,
    slot_name text NOT NULL,
    -- 'lost' (wal_status = lost) or 'missing' (the slot had disappeared).
    reason text NOT NULL CHECK (reason IN ('lost', 'missing')),
    from_lsn pg_lsn NOT NULL,
    from_time timestamptz,
    to_lsn pg_lsn NOT NULL,
    to_time timestamptz NOT NULL,
    tables text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
