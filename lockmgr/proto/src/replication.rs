//! Bodies of the replication messages (primary <-> standby) and of session resumption.
//!
//! | Tag | Message | Body |
//! |-----|---------|------|
//! | 0x13 | `OutputsReceived` | seq u64: the node holds every output of its session up to `seq` |
//! | 0x14 | `ResumeSession` | session_id u64, received u64 (sent just before `ClientProof`, same frame: take over this session, resend outputs after `received`) |
//! | 0x30 | `ReplicaAttach` | epoch u64, incarnation u64, address_len u16 (<= 256), address UTF-8 (a standby, authenticated like a node, asks for the log of `epoch`) |
//! | 0x31 | `Append` | epoch u64, count u16, then `count` entries |
//! | 0x32 | `AppendAck` | epoch u64, next_index u64 |
//! | 0x33 | `AppendRefused` | kind u8 (1 epoch mismatch, 2 gap, 3 not a standby), a u64, b u64 (sent/mine epochs; expected/got index; zeros) |
//! | 0x34 | `Snapshot` | epoch u64, total u64, offset u64, len u16, chunk bytes (`offset + len <= total`) |
//! | 0x35 | `Recorded` | len u16, the configuration record as the coordination service stores it (canonical text, at most 4096 bytes; primary to standby: this epoch records you) |
//!
//! A log entry: index u64, now u64 (engine nanoseconds), input tag u8, then by tag:
//! 1 `OpenSession` session u64, name_len u8 (<= 64), node name UTF-8; 2 `EndSession`
//! session u64; 3 `Request` session u64, request_id u64, `Request` ([`crate::codec`]);
//! 4 `Timeout`; 5 `TakeOrphanedDeletes`; 6 `OutputsReceived` session u64, seq u64.

use lockmgr_engine::{RequestId, SessionId, Time};
use lockmgr_replica::{AppendError, Entry, Epoch, Input};

use crate::codec::{self, get_node_name, node_name_len, put_node_name};
use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, Sink};

/// Smallest encoded entry (an input with no fields): bounds the capacity a decoder reserves.
const MIN_ENTRY_LEN: usize = 8 + 8 + 1;

mod input_tag {
    pub const OPEN_SESSION: u8 = 1;
    pub const END_SESSION: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const TIMEOUT: u8 = 4;
    pub const TAKE_ORPHANED_DELETES: u8 = 5;
    pub const OUTPUTS_RECEIVED: u8 = 6;
}

/// Encoded length of one log entry in an `Append` (for a sender filling a frame).
pub fn entry_len(e: &Entry) -> Result<usize, EncodeError> {
    Ok(MIN_ENTRY_LEN
        + match &e.input {
            Input::OpenSession { node, .. } => 8 + node_name_len(node)?,
            Input::EndSession { .. } => 8,
            Input::Request { req, .. } => 8 + 8 + codec::request_len(req)?,
            Input::Timeout | Input::TakeOrphanedDeletes => 0,
            Input::OutputsReceived { .. } => 16,
        })
}

pub(crate) fn entries_len(entries: &[Entry]) -> Result<usize, EncodeError> {
    if entries.len() > usize::from(u16::MAX) {
        return Err(EncodeError::MessageTooLarge {
            len: entries.len(),
            max: usize::from(u16::MAX),
        });
    }
    let mut n = 2;
    for e in entries {
        n += entry_len(e)?;
    }
    Ok(n)
}

pub(crate) fn put_entries(s: &mut Sink<'_>, entries: &[Entry]) -> Result<(), EncodeError> {
    // Count bounded by entries_len.
    s.u16(entries.len() as u16);
    for e in entries {
        s.u64(e.index);
        s.u64(e.now.0);
        match &e.input {
            Input::OpenSession { session, node } => {
                s.u8(input_tag::OPEN_SESSION);
                s.u64(session.0);
                put_node_name(s, node);
            }
            Input::EndSession { session } => {
                s.u8(input_tag::END_SESSION);
                s.u64(session.0);
            }
            Input::Request {
                session,
                request,
                req,
            } => {
                s.u8(input_tag::REQUEST);
                s.u64(session.0);
                s.u64(request.0);
                codec::put_request(s, req)?;
            }
            Input::Timeout => s.u8(input_tag::TIMEOUT),
            Input::TakeOrphanedDeletes => s.u8(input_tag::TAKE_ORPHANED_DELETES),
            Input::OutputsReceived { session, seq } => {
                s.u8(input_tag::OUTPUTS_RECEIVED);
                s.u64(session.0);
                s.u64(*seq);
            }
        }
    }
    Ok(())
}

pub(crate) fn get_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, DecodeError> {
    let count = usize::from(r.u16()?);
    // Never reserve more than the bytes present could hold.
    let mut entries = Vec::with_capacity(count.min(r.remaining() / MIN_ENTRY_LEN));
    let mut last: Option<u64> = None;
    for _ in 0..count {
        let index = r.u64()?;
        // Entries of one append are consecutive: anything else is a malformed message.
        if let Some(prev) = last {
            if prev.checked_add(1) != Some(index) {
                return Err(DecodeError::InvalidEnumValue {
                    field: "entry.index",
                    value: index,
                });
            }
        }
        last = Some(index);
        let now = Time(r.u64()?);
        let tag = r.u8()?;
        let input = match tag {
            input_tag::OPEN_SESSION => {
                let session = SessionId(r.u64()?);
                let node = get_node_name(r)?;
                Input::OpenSession { session, node }
            }
            input_tag::END_SESSION => Input::EndSession {
                session: SessionId(r.u64()?),
            },
            input_tag::REQUEST => Input::Request {
                session: SessionId(r.u64()?),
                request: RequestId(r.u64()?),
                req: codec::get_request(r)?,
            },
            input_tag::TIMEOUT => Input::Timeout,
            input_tag::TAKE_ORPHANED_DELETES => Input::TakeOrphanedDeletes,
            input_tag::OUTPUTS_RECEIVED => Input::OutputsReceived {
                session: SessionId(r.u64()?),
                seq: r.u64()?,
            },
            other => {
                return Err(DecodeError::InvalidEnumValue {
                    field: "entry.input",
                    value: u64::from(other),
                })
            }
        };
        entries.push(Entry { index, now, input });
    }
    Ok(entries)
}

pub(crate) fn put_refusal(s: &mut Sink<'_>, e: &AppendError) {
    let (kind, a, b) = match *e {
        AppendError::EpochMismatch { sent, mine } => (1, sent.0, mine.0),
        AppendError::Gap { expected, got } => (2, expected, got),
        AppendError::NotStandby => (3, 0, 0),
    };
    s.u8(kind);
    s.u64(a);
    s.u64(b);
}

pub(crate) fn get_refusal(r: &mut Reader<'_>) -> Result<AppendError, DecodeError> {
    let kind = r.u8()?;
    let a = r.u64()?;
    let b = r.u64()?;
    Ok(match kind {
        1 => AppendError::EpochMismatch {
            sent: Epoch(a),
            mine: Epoch(b),
        },
        2 => AppendError::Gap {
            expected: a,
            got: b,
        },
        3 if a == 0 && b == 0 => AppendError::NotStandby,
        _ => {
            return Err(DecodeError::InvalidEnumValue {
                field: "append_refused.kind",
                value: u64::from(kind),
            })
        }
    })
}
