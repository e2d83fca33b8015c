ALTER TABLE walhook.watched_tables
    DROP COLUMN row_filter,
    DROP COLUMN exclude_columns,
    DROP COLUMN columns;
