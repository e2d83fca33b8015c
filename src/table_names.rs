//! How a table named in the configuration (`[[tables]] name = …`, `walhook tail TABLE`) is
//! found in the database.
//!
//! A name is tried as exact identifiers first, then, if it is plain SQL syntax, the way
//! PostgreSQL reads it (unquoted parts folded to lower case, the search path for a name
//! without a schema):
//!
//! - `Sales.Order Items` → schema `Sales`, table `Order Items` (split at the first dot);
//! - `orders` → table `orders` on the search path; `Orders` → `Orders`, else `orders`;
//! - `"Sales"."Order Items"` (anything with a double quote) → SQL syntax only.
//!
//! [`regclass_candidates`] gives the texts to try in order with `to_regclass`, each of
//! them valid syntax, so the lookup never fails with "invalid name syntax".

/// Quotes an SQL identifier: `Order Items` → `"Order Items"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` with both parts quoted exactly.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The `to_regclass` texts for a configured table name, in the order to try them (one or
/// two, never empty).
pub fn regclass_candidates(name: &str) -> Vec<String> {
    if name.contains('"') {
        return vec![name.to_owned()];
    }
    let exact = match name.split_once('.') {
        Some((schema, table)) => qualified(schema, table),
        None => quote_ident(name),
    };
    let mut candidates = vec![exact];
    // Unquoted SQL folds upper case: then it names another table than the exact reading.
    if plain_sql_name(name) && name.chars().any(|c| c.is_ascii_uppercase()) {
        candidates.push(name.to_owned());
    }
    candidates
}

/// One or two unquoted SQL identifiers joined by a dot (`orders`, `app.Orders`).
fn plain_sql_name(name: &str) -> bool {
    let part = |p: &str| {
        p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, None) => part(a),
        (Some(a), Some(b), None) => part(a) && part(b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_try_exact_names_then_sql_syntax() {
        assert_eq!(
            regclass_candidates("Sales.Order Items"),
            vec![r#""Sales"."Order Items""#]
        );
        assert_eq!(regclass_candidates("orders"), vec![r#""orders""#]);
        assert_eq!(regclass_candidates("Orders"), vec![r#""Orders""#, "Orders"]);
        assert_eq!(
            regclass_candidates("app.Orders"),
            vec![r#""app"."Orders""#, "app.Orders"]
        );
        assert_eq!(regclass_candidates("app.orders"), vec![r#""app"."orders""#]);
        assert_eq!(
            regclass_candidates(r#""Sales"."Order Items""#),
            vec![r#""Sales"."Order Items""#]
        );
        assert_eq!(regclass_candidates("a.b.c"), vec![r#""a"."b.c""#]);
        assert_eq!(regclass_candidates("1x"), vec![r#""1x""#]);
    }
}
