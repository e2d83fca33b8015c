DROP TABLE IF EXISTS walhook.console_logins;
DROP TABLE IF EXISTS walhook.console_sessions;
ALTER TABLE walhook.api_tokens DROP COLUMN IF EXISTS admin;
