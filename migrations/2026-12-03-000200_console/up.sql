-- The browser console (docs/console.md): admin tokens, sessions and one-time login links.
-- An admin token (`walhook token create --admin`) sees every subscription in the console.
ALTER TABLE walhook.api_tokens ADD COLUMN admin boolean NOT NULL DEFAULT false;

-- A console session: the SHA-256 of its cookie value, the token it was opened with (a revoked
-- or deleted token ends it), its CSRF token, and when it expires.
CREATE TABLE walhook.console_sessions (
    id_hash text PRIMARY KEY,
    token_id uuid NOT NULL REFERENCES walhook.api_tokens (id) ON DELETE CASCADE,
    csrf text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON walhook.console_sessions (expires_at);

-- A one-time login link (`walhook demo`): the SHA-256 of its code, deleted when used.
CREATE TABLE walhook.console_logins (
    code_hash text PRIMARY KEY,
    token_id uuid NOT NULL REFERENCES walhook.api_tokens (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);
