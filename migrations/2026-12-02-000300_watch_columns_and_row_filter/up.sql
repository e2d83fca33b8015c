-- Per watched table: which columns its events carry and which rows it captures.
--   columns          NULL = every column; else only these (columns added later stay out)
--   exclude_columns  columns left out (columns added later are carried)
--   row_filter       NULL = every row; else PostgreSQL's own text of the predicate
--                    (as pg_get_expr prints it), set by walhook.watch(..., "where" => ...)
ALTER TABLE walhook.watched_tables
    ADD COLUMN columns text[],
    ADD COLUMN exclude_columns text[] NOT NULL DEFAULT '{}',
    ADD COLUMN row_filter text;
