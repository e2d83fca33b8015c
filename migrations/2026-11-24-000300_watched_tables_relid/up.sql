-- Watched tables are followed by OID, so a RENAME or SET SCHEMA keeps the watch (its names
-- are refreshed from the OID) and a DROP TABLE is noticed. NULL only for a row whose table
-- did not exist when this ran (the daemon removes such watches).
ALTER TABLE walhook.watched_tables ADD COLUMN relid oid;
UPDATE walhook.watched_tables w SET relid = c.oid
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = w.schema_name AND c.relname = w.table_name;
CREATE UNIQUE INDEX watched_tables_relid ON walhook.watched_tables (relid);
