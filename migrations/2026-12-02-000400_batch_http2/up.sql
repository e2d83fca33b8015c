-- Batched delivery and cleartext HTTP/2, opt-in per subscription (docs/delivery.md).
-- batch_max NULL or 1: one event per request; 2..1000: a JSON array of up to that many
-- envelopes per request, gathered for at most batch_window_ms. http2: cleartext targets are
-- spoken to in HTTP/2 with prior knowledge (https targets negotiate it by ALPN anyway).
ALTER TABLE walhook.subscriptions
    ADD COLUMN batch_max integer,
    ADD COLUMN batch_window_ms integer NOT NULL DEFAULT 0,
    ADD COLUMN http2 boolean NOT NULL DEFAULT false;
-- The members of one batch share its id (the webhook-id sent): a failed batch is queued as
-- its members' rows with this id, and retried as that same batch.
ALTER TABLE walhook.delivery_queue ADD COLUMN batch_id text;
CREATE INDEX delivery_queue_batch ON walhook.delivery_queue (subscription_id, batch_id)
    WHERE batch_id IS NOT NULL;
