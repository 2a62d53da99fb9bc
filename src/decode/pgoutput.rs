//! A pure decoder of pgoutput (protocol version 1) messages.
//!
//! Bytes in, a typed [`Message`] out, borrowing from the input. Checked access
//! only: a short or malformed body is a [`DecodeError`] naming the message tag
//! and the byte offset, never a panic; a body must be consumed exactly.
//! Layout: PostgreSQL's "Logical Replication Message Formats".

use raa_state::Lsn;

/// One column value of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    /// An unchanged TOASTed value: not sent, must come from the last image.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TupleData<'a>(pub Vec<Datum<'a>>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef<'a> {
    /// Bit 1: part of the replica identity key.
    pub flags: u8,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationBody<'a> {
    pub id: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    pub replica_identity: u8,
    pub columns: Vec<ColumnDef<'a>>,
}

/// The old row an Update or Delete carries: key columns only ('K') or the whole row ('O').
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple<'a> {
    Key(TupleData<'a>),
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    pub fn data(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: &'a str,
    },
    Relation(RelationBody<'a>),
    Type {
        id: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        relation_id: u32,
        new: TupleData<'a>,
    },
    Update {
        relation_id: u32,
        old: Option<OldTuple<'a>>,
        new: TupleData<'a>,
    },
    Delete {
        relation_id: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        options: u8,
        relation_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("empty message")]
    Empty,
    #[error("unknown message tag")]
    UnknownTag,
    #[error("truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("string without a NUL terminator")]
    Unterminated,
    #[error("string is not valid UTF-8")]
    Utf8,
    #[error("negative length {0}")]
    NegativeLength(i32),
    #[error("unknown tuple column kind {0:?}")]
    TupleKind(char),
    #[error("expected tuple marker {expected}, found {found:?}")]
    Marker { expected: &'static str, found: char },
    #[error("{0} trailing bytes after the message body")]
    Trailing(usize),
}

/// A malformed message: which tag, where, what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {tag:?} at byte {offset}: {kind}")]
pub struct DecodeError {
    pub tag: char,
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
}

impl<'a> Reader<'a> {
    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            tag: self.tag,
            offset: self.pos,
            kind,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        if rest.len() < n {
            return Err(self.err(DecodeErrorKind::Truncated {
                needed: n - rest.len(),
            }));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| self.err(DecodeErrorKind::NegativeLength(n)))
    }

    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err(DecodeErrorKind::Unterminated))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| self.err(DecodeErrorKind::Utf8))?;
        self.pos += end + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<TupleData<'a>, DecodeError> {
        let n = self.i16()?;
        let n = usize::try_from(n)
            .map_err(|_| self.err(DecodeErrorKind::NegativeLength(i32::from(n))))?;
        let mut cols = Vec::with_capacity(n.min(1600));
        for _ in 0..n {
            let kind = self.u8()?;
            cols.push(match kind {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.len()?;
                    Datum::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.len()?;
                    Datum::Binary(self.take(len)?)
                }
                other => {
                    self.pos -= 1;
                    return Err(self.err(DecodeErrorKind::TupleKind(char::from(other))));
                }
            });
        }
        Ok(TupleData(cols))
    }

    fn marker(&mut self, expected: &'static str) -> Result<u8, DecodeError> {
        let m = self.u8()?;
        if !expected.as_bytes().contains(&m) {
            self.pos -= 1;
            return Err(self.err(DecodeErrorKind::Marker {
                expected,
                found: char::from(m),
            }));
        }
        Ok(m)
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple<'a>, DecodeError> {
        let t = self.tuple()?;
        Ok(if marker == b'K' {
            OldTuple::Key(t)
        } else {
            OldTuple::Full(t)
        })
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError {
            tag: '\0',
            offset: 0,
            kind: DecodeErrorKind::Empty,
        });
    };
    let mut r = Reader {
        buf,
        pos: 1,
        tag: char::from(tag),
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts: r.i64()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let n = usize::try_from(n)
                .map_err(|_| r.err(DecodeErrorKind::NegativeLength(i32::from(n))))?;
            let mut columns = Vec::with_capacity(n.min(1600));
            for _ in 0..n {
                columns.push(ColumnDef {
                    flags: r.u8()?,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(RelationBody {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            id: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation_id = r.u32()?;
            r.marker("N")?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32()?;
            let mut m = r.marker("KON")?;
            let old = if m == b'N' {
                None
            } else {
                let old = r.old_tuple(m)?;
                m = r.marker("N")?;
                debug_assert_eq!(m, b'N');
                Some(old)
            };
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32()?;
            let m = r.marker("KO")?;
            Message::Delete {
                relation_id,
                old: r.old_tuple(m)?,
            }
        }
        b'T' => {
            let n = r.len()?;
            let options = r.u8()?;
            let mut relation_ids = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                relation_ids.push(r.u32()?);
            }
            Message::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.cstr()?;
            let len = r.len()?;
            Message::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.take(len)?,
            }
        }
        _ => return Err(r.err(DecodeErrorKind::UnknownTag)),
    };
    if r.pos != buf.len() {
        return Err(r.err(DecodeErrorKind::Trailing(buf.len() - r.pos)));
    }
    Ok(msg)
}

/// Writes messages back to bytes: for tests, the fuzz target and benchmarks
/// that need synthetic streams.
pub mod encode {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, t: &TupleData<'_>) {
        out.extend_from_slice(&(t.0.len() as i16).to_be_bytes());
        for d in &t.0 {
            match d {
                Datum::Null => out.push(b'n'),
                Datum::Unchanged => out.push(b'u'),
                Datum::Text(b) | Datum::Binary(b) => {
                    out.push(if matches!(d, Datum::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    fn old(out: &mut Vec<u8>, o: &OldTuple<'_>) {
        out.push(if matches!(o, OldTuple::Key(_)) {
            b'K'
        } else {
            b'O'
        });
        tuple(out, o.data());
    }

    pub fn message(m: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        match m {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                out.push(b'B');
                out.extend_from_slice(&final_lsn.0.to_be_bytes());
                out.extend_from_slice(&commit_ts.to_be_bytes());
                out.extend_from_slice(&xid.to_be_bytes());
            }
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts,
            } => {
                out.push(b'C');
                out.push(*flags);
                out.extend_from_slice(&commit_lsn.0.to_be_bytes());
                out.extend_from_slice(&end_lsn.0.to_be_bytes());
                out.extend_from_slice(&commit_ts.to_be_bytes());
            }
            Message::Origin { commit_lsn, name } => {
                out.push(b'O');
                out.extend_from_slice(&commit_lsn.0.to_be_bytes());
                cstr(&mut out, name);
            }
            Message::Relation(r) => {
                out.push(b'R');
                out.extend_from_slice(&r.id.to_be_bytes());
                cstr(&mut out, r.namespace);
                cstr(&mut out, r.name);
                out.push(r.replica_identity);
                out.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
                for c in &r.columns {
                    out.push(c.flags);
                    cstr(&mut out, c.name);
                    out.extend_from_slice(&c.type_oid.to_be_bytes());
                    out.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            Message::Type {
                id,
                namespace,
                name,
            } => {
                out.push(b'Y');
                out.extend_from_slice(&id.to_be_bytes());
                cstr(&mut out, namespace);
                cstr(&mut out, name);
            }
            Message::Insert { relation_id, new } => {
                out.push(b'I');
                out.extend_from_slice(&relation_id.to_be_bytes());
                out.push(b'N');
                tuple(&mut out, new);
            }
            Message::Update {
                relation_id,
                old: o,
                new,
            } => {
                out.push(b'U');
                out.extend_from_slice(&relation_id.to_be_bytes());
                if let Some(o) = o {
                    old(&mut out, o);
                }
                out.push(b'N');
                tuple(&mut out, new);
            }
            Message::Delete {
                relation_id,
                old: o,
            } => {
                out.push(b'D');
                out.extend_from_slice(&relation_id.to_be_bytes());
                old(&mut out, o);
            }
            Message::Truncate {
                options,
                relation_ids,
            } => {
                out.push(b'T');
                out.extend_from_slice(&(relation_ids.len() as i32).to_be_bytes());
                out.push(*options);
                for id in relation_ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                out.push(b'M');
                out.push(u8::from(*transactional));
                out.extend_from_slice(&lsn.0.to_be_bytes());
                cstr(&mut out, prefix);
                out.extend_from_slice(&(content.len() as i32).to_be_bytes());
                out.extend_from_slice(content);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datum() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..12)
    }

    /// Owned inputs for a random message, borrowed when built.
    #[derive(Clone, Debug)]
    struct Parts {
        kind: u8,
        lsn: u64,
        n: i64,
        id: u32,
        names: Vec<String>,
        values: Vec<(u8, Vec<u8>)>,
    }

    fn parts() -> impl Strategy<Value = Parts> {
        (
            0_u8..10,
            any::<u64>(),
            any::<i64>(),
            any::<u32>(),
            proptest::collection::vec("[a-z_]{0,8}", 1..5),
            proptest::collection::vec((0_u8..4, datum()), 0..6),
        )
            .prop_map(|(kind, lsn, n, id, names, values)| Parts {
                kind,
                lsn,
                n,
                id,
                names,
                values,
            })
    }

    fn build(p: &Parts) -> Message<'_> {
        let tuple = TupleData(
            p.values
                .iter()
                .map(|(k, v)| match k {
                    0 => Datum::Null,
                    1 => Datum::Unchanged,
                    2 => Datum::Text(v),
                    _ => Datum::Binary(v),
                })
                .collect(),
        );
        let name = p.names[0].as_str();
        match p.kind {
            0 => Message::Begin {
                final_lsn: Lsn(p.lsn),
                commit_ts: p.n,
                xid: p.id,
            },
            1 => Message::Commit {
                flags: 0,
                commit_lsn: Lsn(p.lsn),
                end_lsn: Lsn(p.lsn / 2),
                commit_ts: p.n,
            },
            2 => Message::Origin {
                commit_lsn: Lsn(p.lsn),
                name,
            },
            3 => Message::Relation(RelationBody {
                id: p.id,
                namespace: "public",
                name,
                replica_identity: b'd',
                columns: p
                    .names
                    .iter()
                    .map(|n| ColumnDef {
                        flags: 1,
                        name: n,
                        type_oid: 23,
                        type_modifier: -1,
                    })
                    .collect(),
            }),
            4 => Message::Type {
                id: p.id,
                namespace: "public",
                name,
            },
            5 => Message::Insert {
                relation_id: p.id,
                new: tuple,
            },
            6 => Message::Update {
                relation_id: p.id,
                old: (p.n % 2 == 0).then(|| OldTuple::Key(tuple.clone())),
                new: tuple,
            },
            7 => Message::Delete {
                relation_id: p.id,
                old: OldTuple::Full(tuple),
            },
            8 => Message::Truncate {
                options: 1,
                relation_ids: vec![p.id, p.id / 3],
            },
            _ => Message::Message {
                transactional: p.n % 2 == 0,
                lsn: Lsn(p.lsn),
                prefix: name,
                content: p.values.first().map_or(&[][..], |(_, v)| v),
            },
        }
    }

    proptest! {
        #[test]
        fn round_trips(p in parts()) {
            let msg = build(&p);
            let bytes = encode::message(&msg);
            prop_assert_eq!(decode(&bytes), Ok(msg));
        }

        /// Every strict prefix of a valid message is an error, and so is any suffix.
        #[test]
        fn truncation_and_trailing_bytes_are_errors(p in parts(), extra in 1_u8..255) {
            let bytes = encode::message(&build(&p));
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err(), "prefix of {} bytes decoded", cut);
            }
            let mut longer = bytes.clone();
            longer.push(extra);
            let err = decode(&longer).unwrap_err();
            prop_assert_eq!(err.kind, DecodeErrorKind::Trailing(1));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn errors_name_the_tag_and_offset() {
        let err = decode(b"I\x00\x00\x00\x01N\x00\x01x").unwrap_err();
        assert_eq!(err.tag, 'I');
        assert_eq!(err.offset, 8);
        assert_eq!(err.kind, DecodeErrorKind::TupleKind('x'));
        assert!(err.to_string().contains("'I' at byte 8"), "{err}");
        assert_eq!(decode(b"Z").unwrap_err().kind, DecodeErrorKind::UnknownTag);
        assert_eq!(decode(b"").unwrap_err().kind, DecodeErrorKind::Empty);
        // A negative text length.
        let err = decode(b"I\x00\x00\x00\x01N\x00\x01t\xff\xff\xff\xff").unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::NegativeLength(-1));
        // A string without a terminator.
        assert_eq!(
            decode(b"Y\x00\x00\x00\x01public").unwrap_err().kind,
            DecodeErrorKind::Unterminated
        );
        // A delete without an old tuple marker.
        let err = decode(b"D\x00\x00\x00\x01N\x00\x00").unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::Marker { found: 'N', .. }),
            "{err}"
        );
    }
}
