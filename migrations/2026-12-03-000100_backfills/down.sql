DROP VIEW IF EXISTS walhook.backfills;
DROP TABLE walhook.backfill_jobs;
