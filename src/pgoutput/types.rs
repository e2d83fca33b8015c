//! What each column type becomes in JSON: the categories `to_jsonb` uses.
//!
//! `to_jsonb` looks at a value's type (after unwrapping domains): booleans, numbers,
//! dates/timestamps, json/jsonb, arrays and composites get their own rules; every other type
//! becomes the JSON string of its text output. The [`TypeRegistry`] maps type OIDs to those
//! categories. Builtin scalars are known statically; arrays, domains, composites, enums and
//! any user type are resolved once from `pg_type` by the capture's catalog lookups and cached.
//!
//! Not reproduced: a user-defined type with a cast to `json` (which `to_jsonb` would use);
//! such values fall back to their text form.

use std::collections::HashMap;
use std::sync::Arc;

/// How a type's text output maps to JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `bool`: `t`/`f` → true/false.
    Bool,
    /// int2/4/8, float4/8, numeric: a JSON number, or a string for NaN/Infinity.
    Number,
    /// `date`: ISO text as is.
    Date,
    /// `timestamp`: ISO-8601 with `T`.
    Timestamp,
    /// `timestamptz`: ISO-8601 with `T` and a `+hh:mm` offset.
    Timestamptz,
    /// `json`: embedded, numbers normalised as jsonb stores them.
    Json,
    /// `jsonb`: embedded as is.
    Jsonb,
    /// An array of `element`, whose text uses `delimiter` between items.
    Array {
        /// Element type OID.
        element: u32,
        /// The element type's `typdelim`.
        delimiter: u8,
    },
    /// A composite (row) type: its attributes' names and type OIDs, in order.
    Composite(Arc<[(String, u32)]>),
    /// A domain: behaves as its base type.
    Domain(u32),
    /// Everything else: the text output as a JSON string.
    Text,
}

/// Type OID → [`Kind`], for builtins and for types resolved from the catalog.
#[derive(Debug, Default)]
pub struct TypeRegistry {
    resolved: HashMap<u32, Kind>,
}

impl TypeRegistry {
    /// The kind of `oid`, following domains to their base type. Unresolved types are text.
    pub fn kind(&self, mut oid: u32) -> &Kind {
        // Domains nest at most a few levels; the bound guards against a corrupt cycle.
        for _ in 0..32 {
            let kind = builtin(oid).or_else(|| self.resolved.get(&oid));
            match kind {
                Some(Kind::Domain(base)) => oid = *base,
                Some(kind) => return kind,
                None => return &Kind::Text,
            }
        }
        &Kind::Text
    }

    /// Whether `oid` still has to be looked up in the catalog.
    pub fn needs_lookup(&self, oid: u32) -> bool {
        builtin(oid).is_none() && !self.resolved.contains_key(&oid)
    }

    /// Records a type resolved from the catalog.
    pub fn insert(&mut self, oid: u32, kind: Kind) {
        self.resolved.insert(oid, kind);
    }

    /// Forgets a type (the server announced it again, e.g. after `ALTER TYPE`).
    pub fn forget(&mut self, oid: u32) {
        self.resolved.remove(&oid);
    }

    /// The type OIDs a kind refers to, which must be resolved too.
    pub fn dependencies(kind: &Kind) -> Vec<u32> {
        match kind {
            Kind::Array { element, .. } => vec![*element],
            Kind::Composite(fields) => fields.iter().map(|(_, oid)| *oid).collect(),
            Kind::Domain(base) => vec![*base],
            _ => Vec::new(),
        }
    }
}

/// Builtin scalar types whose category never changes (OIDs are fixed in `pg_type.dat`).
fn builtin(oid: u32) -> Option<&'static Kind> {
    Some(match oid {
        16 => &Kind::Bool,
        20 | 21 | 23 | 700 | 701 | 1700 => &Kind::Number,
        1082 => &Kind::Date,
        1114 => &Kind::Timestamp,
        1184 => &Kind::Timestamptz,
        114 => &Kind::Json,
        3802 => &Kind::Jsonb,
        // text, varchar, bpchar, char, name, uuid, bytea, time, timetz, interval, inet, cidr,
        // macaddr, macaddr8, money, bit, varbit, xml, tsvector, pg_lsn, xid, cid, tid, and oid
        // (a string in PostgreSQL 15's to_jsonb).
        26 | 25 | 1043 | 1042 | 18 | 19 | 2950 | 17 | 1083 | 1266 | 1186 | 869 | 650 | 829
        | 774 | 790 | 1560 | 1562 | 142 | 3614 | 3220 | 28 | 29 | 27 => &Kind::Text,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_resolve_to_their_base() {
        let mut types = TypeRegistry::default();
        assert!(types.needs_lookup(90000));
        types.insert(90000, Kind::Domain(90001));
        types.insert(90001, Kind::Domain(23));
        assert_eq!(types.kind(90000), &Kind::Number);
        assert!(!types.needs_lookup(23));
        assert_eq!(types.kind(424242), &Kind::Text);
    }
}
