DROP INDEX IF EXISTS walhook.delivery_queue_batch;
ALTER TABLE walhook.delivery_queue DROP COLUMN IF EXISTS batch_id;
ALTER TABLE walhook.subscriptions
    DROP COLUMN IF EXISTS batch_max,
    DROP COLUMN IF EXISTS batch_window_ms,
    DROP COLUMN IF EXISTS http2;
