//! Diesel table definitions for the `walhook` schema (see `migrations/`).

diesel::table! {
    /// Tables whose changes become events.
    walhook.watched_tables (schema_name, table_name) {
        /// Schema of the watched table.
        schema_name -> Text,
        /// Name of the watched table.
        table_name -> Text,
        /// Event noun (`orders` in `orders.created`).
        noun -> Text,
        /// Verbs produced: created, updated, deleted, truncated.
        verbs -> Array<Text>,
        /// Whether watch() set REPLICA IDENTITY FULL.
        full_identity -> Bool,
        /// When it was watched.
        created_at -> Timestamptz,
        /// The table's OID: the watch follows it through renames (NULL only before the
        /// daemon linked an older row).
        relid -> Nullable<Oid>,
        /// Only these columns are carried (NULL = every column). (`columns` is a name
        /// diesel's macro reserves.)
        #[sql_name = "columns"]
        column_list -> Nullable<Array<Text>>,
        /// Columns left out of every event.
        exclude_columns -> Array<Text>,
        /// The row filter as PostgreSQL prints it (NULL = every row).
        row_filter -> Nullable<Text>,
    }
}

diesel::table! {
    /// Webhook subscriptions (SPEC §3).
    walhook.subscriptions (id) {
        /// Subscription id.
        id -> Uuid,
        /// Owning account; NULL = admin.
        owner -> Nullable<Text>,
        /// Event patterns.
        events -> Array<Text>,
        /// Where events are POSTed.
        target_url -> Text,
        /// Column → value (or array of values) conditions on `data`.
        filter -> Jsonb,
        /// Signing secret `whsec_…`.
        secret -> Text,
        /// Extra headers.
        headers -> Jsonb,
        /// Echoed in every envelope.
        context -> Nullable<Text>,
        /// Inactive subscriptions never match.
        active -> Bool,
        /// After this, the subscription never matches.
        expires_at -> Nullable<Timestamptz>,
        /// Why it was disabled.
        disabled_reason -> Nullable<Text>,
        /// Creation time.
        created_at -> Timestamptz,
        /// Last change.
        updated_at -> Timestamptz,
        /// Events per request: NULL or 1 = one (no batching), 2..1000 = a JSON array.
        batch_max -> Nullable<Integer>,
        /// How long a batch may wait to fill, in milliseconds (0..10000).
        batch_window_ms -> Integer,
        /// Cleartext HTTP/2 (prior knowledge) for `http://` targets.
        http2 -> Bool,
    }
}

diesel::table! {
    /// REST API tokens (only a SHA-256 hash of each token is stored).
    walhook.api_tokens (id) {
        /// Token id (shown by `walhook token list`, used to revoke).
        id -> Uuid,
        /// The account whose subscriptions the token manages.
        owner -> Text,
        /// Event patterns the token may subscribe to.
        scopes -> Array<Text>,
        /// Hex SHA-256 of the token.
        token_hash -> Text,
        /// Creation time.
        created_at -> Timestamptz,
        /// Last authenticated use.
        last_used_at -> Nullable<Timestamptz>,
        /// When revoked; revoked tokens are refused.
        revoked_at -> Nullable<Timestamptz>,
        /// An admin token: sees every subscription in the console.
        admin -> Bool,
    }
}
