DROP INDEX IF EXISTS walhook.watched_tables_relid;
ALTER TABLE walhook.watched_tables DROP COLUMN IF EXISTS relid;
