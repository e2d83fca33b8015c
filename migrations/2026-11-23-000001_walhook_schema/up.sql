-- walhook's own schema: watched tables, subscriptions, API tokens, the delivery queue
-- (which also holds dead letters), the trigger-mode outbox, and checkpoints.
-- Functions, triggers and views live in sql/ and are (re)installed after migrations.

CREATE SCHEMA IF NOT EXISTS walhook;

-- Key/value settings the daemon publishes for SQL functions (e.g. its publication name).
CREATE TABLE walhook.settings (
    name text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO walhook.settings VALUES ('publication', 'walhook'), ('allow_private_targets', 'false');

CREATE TABLE walhook.watched_tables (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    noun text NOT NULL,
    verbs text[] NOT NULL DEFAULT '{created,updated,deleted}',
    full_identity boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name),
    CONSTRAINT watched_tables_noun_unique UNIQUE (noun)
);

CREATE TABLE walhook.subscriptions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner text,
    events text[] NOT NULL,
    target_url text NOT NULL,
    filter jsonb NOT NULL DEFAULT '{}',
    secret text NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    context text,
    active boolean NOT NULL DEFAULT true,
    expires_at timestamptz,
    disabled_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_owner ON walhook.subscriptions (owner);
CREATE INDEX subscriptions_target_url ON walhook.subscriptions (target_url);

CREATE TABLE walhook.api_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner text NOT NULL,
    scopes text[] NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- Events that must wait (failure, ordering, slow endpoint); status 'dead' = dead letter.
CREATE TABLE walhook.delivery_queue (
    id bigserial PRIMARY KEY,
    subscription_id uuid NOT NULL REFERENCES walhook.subscriptions (id) ON DELETE CASCADE,
    event_id text NOT NULL,
    event_type text NOT NULL,
    row_key text NOT NULL,
    body text NOT NULL, -- the exact bytes signed and sent
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX delivery_queue_due ON walhook.delivery_queue (next_attempt_at) WHERE status = 'pending';
-- Per-row order: "is there an older pending row of this subscription and row?"
CREATE INDEX delivery_queue_row ON walhook.delivery_queue (subscription_id, row_key, id) WHERE status = 'pending';

-- Per-subscription delivery outcomes, for health and disable_after.
CREATE TABLE walhook.subscription_stats (
    subscription_id uuid PRIMARY KEY REFERENCES walhook.subscriptions (id) ON DELETE CASCADE,
    last_success_at timestamptz,
    last_error_at timestamptz,
    last_error text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since timestamptz
);

-- Trigger mode: row changes written by AFTER ROW triggers, drained in id order.
CREATE TABLE walhook.outbox (
    id bigserial PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    schema_name text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    old_row jsonb,
    new_row jsonb,
    committed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE walhook.checkpoints (
    name text PRIMARY KEY,
    lsn pg_lsn,
    position bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);
