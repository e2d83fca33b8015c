//! pgoutput protocol version 1: bytes of one `XLogData` payload → a typed [`PgOutput`].
//!
//! Tuple values borrow from the payload, so decoding a row allocates only its JSON.

use super::DecodeError;
use crate::lsn::Lsn;

/// One column's value inside a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// SQL NULL ('n').
    Null,
    /// An unchanged TOASTed value the server did not send ('u').
    UnchangedToast,
    /// Text format ('t'), the output function's result.
    Text(&'a [u8]),
    /// Binary format ('b'); walhook asks for text, so this only appears if a server sends it.
    Binary(&'a [u8]),
}

/// A row image: one value per column of the relation.
pub type Tuple<'a> = Vec<TupleValue<'a>>;

/// Which old image an UPDATE or DELETE carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// 'K': only the replica identity key columns (others are NULL).
    Key,
    /// 'O': the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// A column as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (flag bit 1).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// A Relation message: the shape of a table as of the following changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub id: u32,
    /// Schema; pgoutput sends "" for `pg_catalog`.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: u8,
    /// Columns in attribute order (dropped and generated columns excluded by the server).
    pub columns: Vec<RelationColumn>,
}

/// One decoded pgoutput message.
#[derive(Debug, PartialEq)]
pub enum PgOutput<'a> {
    /// Start of a transaction.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record: what to acknowledge once handled.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// The transaction came from another origin (a replication origin).
    Origin {
        /// Commit LSN on the origin server.
        lsn: Lsn,
        /// Origin name.
        name: &'a str,
    },
    /// Table description, sent before its first change and again after DDL.
    Relation(Relation),
    /// A non-builtin type used by a following Relation.
    Type {
        /// Type OID.
        oid: u32,
        /// Schema name.
        schema: &'a str,
        /// Type name.
        name: &'a str,
    },
    /// INSERT.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The new row.
        new: Tuple<'a>,
    },
    /// UPDATE.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old row image, when the server sends one.
        old: Option<(OldKind, Tuple<'a>)>,
        /// The new row.
        new: Tuple<'a>,
    },
    /// DELETE.
    Delete {
        /// Relation OID.
        relation: u32,
        /// The old row image.
        old: (OldKind, Tuple<'a>),
    },
    /// TRUNCATE of one or more relations.
    Truncate {
        /// Bit 1 CASCADE, bit 2 RESTART IDENTITY.
        options: u8,
        /// Truncated relation OIDs.
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix given by the emitter.
        prefix: &'a str,
        /// Payload.
        content: &'a [u8],
    },
}

impl<'a> PgOutput<'a> {
    /// Parses one pgoutput message.
    pub fn parse(bytes: &'a [u8]) -> Result<PgOutput<'a>, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let tag = r.u8()?;
        let message = match tag {
            b'B' => PgOutput::Begin {
                final_lsn: Lsn(r.u64()?),
                commit_time: r.i64()?,
                xid: r.u32()?,
            },
            b'C' => {
                let _flags = r.u8()?;
                PgOutput::Commit {
                    commit_lsn: Lsn(r.u64()?),
                    end_lsn: Lsn(r.u64()?),
                    commit_time: r.i64()?,
                }
            }
            b'O' => PgOutput::Origin {
                lsn: Lsn(r.u64()?),
                name: r.cstr()?,
            },
            b'R' => {
                let id = r.u32()?;
                let schema = r.cstr()?.to_owned();
                let name = r.cstr()?.to_owned();
                let replica_identity = r.u8()?;
                let count = r.u16()?;
                let mut columns = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    columns.push(RelationColumn {
                        is_key: r.u8()? & 1 == 1,
                        name: r.cstr()?.to_owned(),
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    });
                }
                PgOutput::Relation(Relation {
                    id,
                    schema,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => PgOutput::Type {
                oid: r.u32()?,
                schema: r.cstr()?,
                name: r.cstr()?,
            },
            b'I' => {
                let relation = r.u32()?;
                r.expect(b'N')?;
                PgOutput::Insert {
                    relation,
                    new: r.tuple()?,
                }
            }
            b'U' => {
                let relation = r.u32()?;
                let old = match r.u8()? {
                    b'N' => None,
                    kind => {
                        let old = Some((old_kind(kind)?, r.tuple()?));
                        r.expect(b'N')?;
                        old
                    }
                };
                PgOutput::Update {
                    relation,
                    old,
                    new: r.tuple()?,
                }
            }
            b'D' => {
                let relation = r.u32()?;
                let kind = old_kind(r.u8()?)?;
                PgOutput::Delete {
                    relation,
                    old: (kind, r.tuple()?),
                }
            }
            b'T' => {
                let count = r.u32()?;
                let options = r.u8()?;
                let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
                PgOutput::Truncate { options, relations }
            }
            b'M' => {
                let transactional = r.u8()? & 1 == 1;
                let lsn = Lsn(r.u64()?);
                let prefix = r.cstr()?;
                let len = r.u32()? as usize;
                PgOutput::Message {
                    transactional,
                    lsn,
                    prefix,
                    content: r.take(len)?,
                }
            }
            other => return Err(DecodeError::UnknownMessage(other)),
        };
        Ok(message)
    }
}

fn old_kind(tag: u8) -> Result<OldKind, DecodeError> {
    match tag {
        b'K' => Ok(OldKind::Key),
        b'O' => Ok(OldKind::Full),
        other => Err(DecodeError::Malformed(format!(
            "expected old tuple marker 'K' or 'O', got {other:#x}"
        ))),
    }
}

/// A bounds-checked big-endian cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn expect(&mut self, tag: u8) -> Result<(), DecodeError> {
        match self.u8()? {
            t if t == tag => Ok(()),
            t => Err(DecodeError::Malformed(format!(
                "expected {:?}, got {:#x}",
                tag as char, t
            ))),
        }
    }

    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let rest = &self.bytes[self.at..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated)?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeError::Malformed("name is not UTF-8".into()))?;
        self.at += nul + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let count = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            values.push(match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.u32()? as usize;
                    TupleValue::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    TupleValue::Binary(self.take(len)?)
                }
                other => {
                    return Err(DecodeError::Malformed(format!(
                        "unknown tuple column kind {other:#x}"
                    )));
                }
            });
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple_bytes(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.push(b'n'),
                Some(s) => {
                    b.push(b't');
                    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn parses_begin_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&726u32.to_be_bytes());
        assert_eq!(
            PgOutput::parse(&b).unwrap(),
            PgOutput::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: 5,
                xid: 726
            }
        );
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&16u64.to_be_bytes());
        c.extend_from_slice(&40u64.to_be_bytes());
        c.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(
            PgOutput::parse(&c).unwrap(),
            PgOutput::Commit {
                commit_lsn: Lsn(16),
                end_lsn: Lsn(40),
                commit_time: 7
            }
        );
    }

    #[test]
    fn parses_relation_and_update_with_old_key() {
        let mut r = vec![b'R'];
        r.extend_from_slice(&16384u32.to_be_bytes());
        r.extend_from_slice(b"public\0orders\0d");
        r.extend_from_slice(&2u16.to_be_bytes());
        r.extend_from_slice(&[1]);
        r.extend_from_slice(b"id\0");
        r.extend_from_slice(&23u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r.extend_from_slice(&[0]);
        r.extend_from_slice(b"note\0");
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        let PgOutput::Relation(rel) = PgOutput::parse(&r).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            (rel.id, rel.schema.as_str(), rel.name.as_str()),
            (16384, "public", "orders")
        );
        assert!(rel.columns[0].is_key && !rel.columns[1].is_key);

        let mut u = vec![b'U'];
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'K');
        u.extend(tuple_bytes(&[Some("1"), None]));
        u.push(b'N');
        u.extend_from_slice(&2u16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1u32.to_be_bytes());
        u.extend_from_slice(b"2u");
        assert_eq!(
            PgOutput::parse(&u).unwrap(),
            PgOutput::Update {
                relation: 16384,
                old: Some((OldKind::Key, vec![TupleValue::Text(b"1"), TupleValue::Null])),
                new: vec![TupleValue::Text(b"2"), TupleValue::UnchangedToast],
            }
        );
    }

    #[test]
    fn rejects_truncated_and_unknown() {
        assert!(matches!(
            PgOutput::parse(b"B\0\0"),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            PgOutput::parse(b"Z"),
            Err(DecodeError::UnknownMessage(b'Z'))
        ));
        let mut i = vec![b'I'];
        i.extend_from_slice(&1u32.to_be_bytes());
        i.push(b'N');
        i.extend_from_slice(&1u16.to_be_bytes());
        i.push(b't');
        i.extend_from_slice(&100u32.to_be_bytes());
        i.extend_from_slice(b"short");
        assert!(matches!(PgOutput::parse(&i), Err(DecodeError::Truncated)));
    }
}
