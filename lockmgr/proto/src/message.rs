//! The messages a frame carries.
//!
//! Each message is a 4-byte header (see the crate docs) followed by its body. Bodies:
//!
//! | Tag | Message | Body |
//! |-----|---------|------|
//! | 0x01 | `ClientHello` | min_version u8, max_version u8, client_nonce `[u8; 32]`, name_len u8 (<= 64), node_name UTF-8 |
//! | 0x02 | `ServerChallenge` | session_id u64, version u8, server_nonce `[u8; 32]` |
//! | 0x03 | `ClientProof` | proof `[u8; 32]` |
//! | 0x04 | `SessionAccepted` | session_id u64, liveness_lease_ms u32, server_proof `[u8; 32]` |
//! | 0x05 | `SessionRejected` | reason u16 ([`RejectReason`]) |
//! | 0x06 | `Heartbeat` | seq u64 |
//! | 0x07 | `HeartbeatAck` | seq u64 |
//! | 0x08 | `Goodbye` | (empty) |
//! | 0x10 | `Request` | request_id u64, `Request` (see [`crate::codec`]) |
//! | 0x11 | `Reply` | request_id u64, `Reply` |
//! | 0x12 | `Notify` | `Notification` |
//! | 0x20 | `StatusQuery` | (empty) |
//! | 0x21 | `StatusText` | more bool, text UTF-8 (the rest of the body) |
//! | 0x22 | `MemberQuery` | name_len u8 (<= 64), node_name UTF-8 |
//! | 0x23 | `MemberState` | name_len u8 (<= 64), node_name UTF-8, has_session bool |
//! | 0x13, 0x14, 0x30-0x35 | session resumption and replication | see [`crate::replication`] |
//!
//! A body must be consumed exactly: trailing bytes are an error, so every message has exactly
//! one encoding and decode-then-encode reproduces the input bytes.

use lockmgr_engine::{Notification, Reply, Request, RequestId, SessionId};
use lockmgr_replica::{AppendError, Configuration, Entry, Epoch};

use crate::codec::{self, get_node_name, node_name_len, put_node_name};
use crate::error::{DecodeError, EncodeError};
use crate::replication;
use crate::wire::{Reader, Sink};
use crate::{FRAME_HEADER_LEN, MAX_FRAME, MSG_HEADER_LEN};

/// 32 random bytes contributed by one side of the session handshake.
pub type Nonce = [u8; 32];
/// An HMAC-SHA256 proof of possession of the cluster key.
pub type Proof = [u8; 32];

pub use crate::codec::MAX_NODE_NAME;
/// Largest snapshot a standby accepts, in bytes: bounds what a receiver reserves for one.
pub const MAX_SNAPSHOT: u64 = 1 << 32;
/// Largest `Snapshot` chunk: what fits alone in a `MAX_FRAME` frame.
pub const MAX_SNAPSHOT_CHUNK: usize = MAX_FRAME - FRAME_HEADER_LEN - MSG_HEADER_LEN - 26;
/// Longest `StatusText` chunk, in bytes: what fits alone in a `MAX_FRAME` frame.
pub const MAX_STATUS_TEXT: usize = MAX_FRAME - FRAME_HEADER_LEN - MSG_HEADER_LEN - 1;

/// Message type tags (the first byte of each message header).
pub mod msg_type {
    pub const CLIENT_HELLO: u8 = 0x01;
    pub const SERVER_CHALLENGE: u8 = 0x02;
    pub const CLIENT_PROOF: u8 = 0x03;
    pub const SESSION_ACCEPTED: u8 = 0x04;
    pub const SESSION_REJECTED: u8 = 0x05;
    pub const HEARTBEAT: u8 = 0x06;
    pub const HEARTBEAT_ACK: u8 = 0x07;
    pub const GOODBYE: u8 = 0x08;
    pub const REQUEST: u8 = 0x10;
    pub const REPLY: u8 = 0x11;
    pub const NOTIFY: u8 = 0x12;
    pub const OUTPUTS_RECEIVED: u8 = 0x13;
    pub const RESUME_SESSION: u8 = 0x14;
    pub const STATUS_QUERY: u8 = 0x20;
    pub const STATUS_TEXT: u8 = 0x21;
    pub const MEMBER_QUERY: u8 = 0x22;
    pub const MEMBER_STATE: u8 = 0x23;
    pub const REPLICA_ATTACH: u8 = 0x30;
    pub const APPEND: u8 = 0x31;
    pub const APPEND_ACK: u8 = 0x32;
    pub const APPEND_REFUSED: u8 = 0x33;
    pub const SNAPSHOT: u8 = 0x34;
    pub const RECORDED: u8 = 0x35;

    /// Whether this version of the codec can decode messages of type `tag`.
    pub const fn is_known(tag: u8) -> bool {
        matches!(
            tag,
            CLIENT_HELLO
                | SERVER_CHALLENGE
                | CLIENT_PROOF
                | SESSION_ACCEPTED
                | SESSION_REJECTED
                | HEARTBEAT
                | HEARTBEAT_ACK
                | GOODBYE
                | REQUEST
                | REPLY
                | NOTIFY
                | STATUS_QUERY
                | STATUS_TEXT
                | MEMBER_QUERY
                | MEMBER_STATE
                | OUTPUTS_RECEIVED
                | RESUME_SESSION
                | REPLICA_ATTACH
                | APPEND
                | APPEND_ACK
                | APPEND_REFUSED
                | SNAPSHOT
                | RECORDED
        )
    }
}

/// Why the server refused a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum RejectReason {
    /// The client's proof did not verify: it does not hold the cluster key.
    BadProof = 1,
    /// No protocol version in the client's range is supported.
    UnsupportedVersion = 2,
    /// The node name is not a member of the cluster.
    UnknownNode = 3,
    /// A live session for this node name already exists.
    DuplicateNode = 4,
    /// The server cannot take more sessions now.
    Overloaded = 5,
    /// The handshake messages arrived out of order or malformed.
    ProtocolError = 6,
    /// This lockmgrd is not the primary of the current epoch (a standby, or a deposed
    /// primary): try the next configured address.
    NotPrimary = 7,
    /// `ResumeSession` named a session this lockmgrd cannot continue (unknown, another
    /// node's, or outputs the node missed are gone): start a new session.
    SessionLost = 8,
}

impl RejectReason {
    pub const fn to_wire(self) -> u16 {
        self as u16
    }

    pub const fn from_wire(v: u16) -> Option<RejectReason> {
        Some(match v {
            1 => RejectReason::BadProof,
            2 => RejectReason::UnsupportedVersion,
            3 => RejectReason::UnknownNode,
            4 => RejectReason::DuplicateNode,
            5 => RejectReason::Overloaded,
            6 => RejectReason::ProtocolError,
            7 => RejectReason::NotPrimary,
            8 => RejectReason::SessionLost,
            _ => return None,
        })
    }
}

/// One message of the lockmgr protocol.
///
/// Handshake: client `ClientHello` -> server `ServerChallenge` -> client `ClientProof` ->
/// server `SessionAccepted` (carrying the server's own proof, for mutual authentication) or
/// `SessionRejected`. See [`auth`](crate::auth) for the proofs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Message {
    ClientHello {
        /// The smbd node's cluster name, at most [`MAX_NODE_NAME`] bytes.
        node_name: String,
        client_nonce: Nonce,
        /// Lowest and highest protocol version the client speaks.
        min_version: u8,
        max_version: u8,
    },
    ServerChallenge {
        /// The session id the server assigns; also bound into both proofs.
        session_id: SessionId,
        /// The version the server selected from the client's range.
        version: u8,
        server_nonce: Nonce,
    },
    ClientProof {
        proof: Proof,
    },
    SessionAccepted {
        session_id: SessionId,
        /// The client must show liveness (any frame, e.g. a heartbeat) within this period or
        /// the server expires the session and releases its state.
        liveness_lease_ms: u32,
        server_proof: Proof,
    },
    SessionRejected {
        reason: RejectReason,
    },
    Heartbeat {
        seq: u64,
    },
    /// Echoes the `seq` of the heartbeat it answers.
    HeartbeatAck {
        seq: u64,
    },
    /// Orderly end of the session; the server releases the session's state.
    Goodbye,
    Request {
        request_id: RequestId,
        body: Request,
    },
    Reply {
        request_id: RequestId,
        body: Reply,
    },
    Notify {
        body: Notification,
    },
    /// Asks the server for its human-readable state (operator view).
    StatusQuery,
    /// A chunk of the answer to `StatusQuery`; `more` is set on every chunk but the last.
    /// Long text is split with [`split_status_text`].
    StatusText {
        more: bool,
        text: String,
    },
    /// Asks whether the lock manager holds a session for node `node`: connected, or detached
    /// and still within its liveness lease (it may resume). A node without one holds nothing
    /// any more (it is fenced), so another node may take over what it served.
    MemberQuery {
        node: String,
    },
    /// The answer to `MemberQuery`.
    MemberState {
        node: String,
        has_session: bool,
    },
    /// Node to primary: every engine output (reply or notification) of the session up to
    /// `seq` (counted from 1 since the session began) has arrived; replicas may forget them.
    OutputsReceived {
        seq: u64,
    },
    /// Node to server, in the frame of its `ClientProof` and before it: continue `session_id` (a session
    /// of this node, kept by the replicas) instead of starting a new one, and send again every
    /// output after `received`.
    ResumeSession {
        session_id: SessionId,
        received: u64,
    },
    /// Standby to primary, after authenticating like a node (its node name is its replica
    /// name): send me the log of `epoch`. `incarnation` and `address` (where nodes reach it,
    /// at most [`MAX_REPLICA_ADDRESS`] bytes) are what the primary records for it in the
    /// coordination service.
    ReplicaAttach {
        epoch: Epoch,
        incarnation: u64,
        address: String,
    },
    /// Primary to standby: consecutive log entries of `epoch`.
    Append {
        epoch: Epoch,
        entries: Vec<Entry>,
    },
    /// Standby to primary: every entry below `next_index` of `epoch` is held.
    AppendAck {
        epoch: Epoch,
        next_index: u64,
    },
    /// Standby to primary: the append was not taken.
    AppendRefused {
        refusal: AppendError,
    },
    /// Primary to a joining standby: bytes `offset..offset + chunk.len()` of a snapshot of
    /// `total` bytes taken for `epoch`; the log continues after the last chunk.
    Snapshot {
        epoch: Epoch,
        total: u64,
        offset: u64,
        chunk: Vec<u8>,
    },
    /// Primary to its standby: the coordination service now stores `config`, the epoch that
    /// records this standby. The standby also learns it from its own watch of the
    /// coordination service, but a watch can lag or miss it (etcd stopping right after the
    /// write), and the primary's appends in the new epoch are refused until the standby has
    /// it: every commit would wait for etcd to come back.
    Recorded {
        config: Configuration,
    },
}

impl Message {
    /// The message's type tag ([`msg_type`]).
    pub fn tag(&self) -> u8 {
        use msg_type::*;
        match self {
            Message::ClientHello { .. } => CLIENT_HELLO,
            Message::ServerChallenge { .. } => SERVER_CHALLENGE,
            Message::ClientProof { .. } => CLIENT_PROOF,
            Message::SessionAccepted { .. } => SESSION_ACCEPTED,
            Message::SessionRejected { .. } => SESSION_REJECTED,
            Message::Heartbeat { .. } => HEARTBEAT,
            Message::HeartbeatAck { .. } => HEARTBEAT_ACK,
            Message::Goodbye => GOODBYE,
            Message::Request { .. } => REQUEST,
            Message::Reply { .. } => REPLY,
            Message::Notify { .. } => NOTIFY,
            Message::StatusQuery => STATUS_QUERY,
            Message::StatusText { .. } => STATUS_TEXT,
            Message::MemberQuery { .. } => MEMBER_QUERY,
            Message::MemberState { .. } => MEMBER_STATE,
            Message::OutputsReceived { .. } => OUTPUTS_RECEIVED,
            Message::ResumeSession { .. } => RESUME_SESSION,
            Message::ReplicaAttach { .. } => REPLICA_ATTACH,
            Message::Append { .. } => APPEND,
            Message::AppendAck { .. } => APPEND_ACK,
            Message::AppendRefused { .. } => APPEND_REFUSED,
            Message::Snapshot { .. } => SNAPSHOT,
            Message::Recorded { .. } => RECORDED,
        }
    }

    /// Encoded size including the message header (what [`FrameWriter::push`](crate::FrameWriter::push) adds).
    /// Fails for messages that cannot be encoded at all (e.g. too many lock ranges).
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        Ok(MSG_HEADER_LEN + body_len(self)?)
    }
}

/// Splits operator text into `StatusText` messages of at most [`MAX_STATUS_TEXT`] bytes each,
/// on UTF-8 character boundaries, with `more` set on all but the last. Empty text yields one
/// empty message so the querier always gets an answer.
pub fn split_status_text(text: &str) -> impl Iterator<Item = Message> + '_ {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        let mut cut = r.len().min(MAX_STATUS_TEXT);
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        let (chunk, tail) = r.split_at(cut);
        let more = !tail.is_empty();
        rest = more.then_some(tail);
        Some(Message::StatusText {
            more,
            text: chunk.to_owned(),
        })
    })
}

/// Longest replica address in `ReplicaAttach` (the coordination record's limit).
pub const MAX_REPLICA_ADDRESS: usize = 256;

/// Exact body length; mirrors `encode_body` and checks the same size limits.
pub(crate) fn body_len(msg: &Message) -> Result<usize, EncodeError> {
    Ok(match msg {
        Message::ClientHello { node_name, .. } => 1 + 1 + 32 + node_name_len(node_name)?,
        Message::ServerChallenge { .. } => 8 + 1 + 32,
        Message::ClientProof { .. } => 32,
        Message::SessionAccepted { .. } => 8 + 4 + 32,
        Message::SessionRejected { .. } => 2,
        Message::Heartbeat { .. } | Message::HeartbeatAck { .. } => 8,
        Message::Goodbye | Message::StatusQuery => 0,
        Message::MemberQuery { node } => node_name_len(node)?,
        Message::MemberState { node, .. } => node_name_len(node)? + 1,
        Message::Request { body, .. } => 8 + codec::request_len(body)?,
        Message::Reply { body, .. } => 8 + codec::reply_len(body)?,
        Message::Notify { body } => codec::notification_len(body)?,
        Message::StatusText { text, .. } => {
            // Checked here rather than left to the frame limit so the caller gets a precise
            // error telling it to split, not a generic MessageTooLarge.
            if text.len() > MAX_STATUS_TEXT {
                return Err(EncodeError::StringTooLong {
                    field: "status_text",
                    len: text.len(),
                    max: MAX_STATUS_TEXT,
                });
            }
            1 + text.len()
        }
        Message::OutputsReceived { .. } => 8,
        Message::ReplicaAttach { address, .. } => {
            if address.len() > MAX_REPLICA_ADDRESS {
                return Err(EncodeError::StringTooLong {
                    field: "replica_address",
                    len: address.len(),
                    max: MAX_REPLICA_ADDRESS,
                });
            }
            8 + 8 + 2 + address.len()
        }
        Message::ResumeSession { .. } | Message::AppendAck { .. } => 16,
        Message::Append { entries, .. } => 8 + replication::entries_len(entries)?,
        Message::AppendRefused { .. } => 1 + 8 + 8,
        Message::Snapshot { chunk, .. } => {
            if chunk.len() > MAX_SNAPSHOT_CHUNK {
                return Err(EncodeError::MessageTooLarge {
                    len: chunk.len(),
                    max: MAX_SNAPSHOT_CHUNK,
                });
            }
            8 + 8 + 8 + 2 + chunk.len()
        }
        Message::Recorded { config } => {
            // Only a record the receiver's decoder would take (and that fits its u16 length).
            if config.validate().is_err() {
                return Err(EncodeError::InvalidValue {
                    field: "configuration",
                    value: config.epoch,
                });
            }
            2 + config.encode().len()
        }
    })
}

pub(crate) fn encode_body(s: &mut Sink<'_>, msg: &Message) -> Result<(), EncodeError> {
    match msg {
        Message::ClientHello {
            node_name,
            client_nonce,
            min_version,
            max_version,
        } => {
            s.u8(*min_version);
            s.u8(*max_version);
            s.put(client_nonce);
            put_node_name(s, node_name);
        }
        Message::ServerChallenge {
            session_id,
            version,
            server_nonce,
        } => {
            s.u64(session_id.0);
            s.u8(*version);
            s.put(server_nonce);
        }
        Message::ClientProof { proof } => s.put(proof),
        Message::SessionAccepted {
            session_id,
            liveness_lease_ms,
            server_proof,
        } => {
            s.u64(session_id.0);
            s.u32(*liveness_lease_ms);
            s.put(server_proof);
        }
        Message::SessionRejected { reason } => s.u16(reason.to_wire()),
        Message::Heartbeat { seq } | Message::HeartbeatAck { seq } => s.u64(*seq),
        Message::Goodbye | Message::StatusQuery => {}
        // Names already checked by body_len.
        Message::MemberQuery { node } => put_node_name(s, node),
        Message::MemberState { node, has_session } => {
            put_node_name(s, node);
            s.bool(*has_session);
        }
        Message::Request { request_id, body } => {
            s.u64(request_id.0);
            codec::put_request(s, body)?;
        }
        Message::Reply { request_id, body } => {
            s.u64(request_id.0);
            codec::put_reply(s, body)?;
        }
        Message::Notify { body } => codec::put_notification(s, body)?,
        Message::StatusText { more, text } => {
            // Length limit already enforced by body_len.
            s.bool(*more);
            s.put(text.as_bytes());
        }
        Message::OutputsReceived { seq } => s.u64(*seq),
        Message::ResumeSession {
            session_id,
            received,
        } => {
            s.u64(session_id.0);
            s.u64(*received);
        }
        Message::ReplicaAttach {
            epoch,
            incarnation,
            address,
        } => {
            s.u64(epoch.0);
            s.u64(*incarnation);
            // Bounded by MAX_REPLICA_ADDRESS in body_len.
            s.u16(address.len() as u16);
            s.put(address.as_bytes());
        }
        Message::Append { epoch, entries } => {
            s.u64(epoch.0);
            replication::put_entries(s, entries)?;
        }
        Message::AppendAck { epoch, next_index } => {
            s.u64(epoch.0);
            s.u64(*next_index);
        }
        Message::AppendRefused { refusal } => replication::put_refusal(s, refusal),
        Message::Snapshot {
            epoch,
            total,
            offset,
            chunk,
        } => {
            s.u64(epoch.0);
            s.u64(*total);
            s.u64(*offset);
            // Bounded by body_len.
            s.u16(chunk.len() as u16);
            s.put(chunk);
        }
        Message::Recorded { config } => {
            // Canonical and at most MAX_RECORD (4096) bytes, so the length fits a u16.
            let record = config.encode();
            s.u16(record.len() as u16);
            s.put(record.as_bytes());
        }
    }
    Ok(())
}

/// Decodes one message body. `tag` must be known ([`msg_type::is_known`]).
pub(crate) fn decode_body(tag: u8, body: &[u8]) -> Result<Message, DecodeError> {
    use msg_type::*;
    let mut r = Reader::new(body);
    let msg = match tag {
        CLIENT_HELLO => {
            let min_version = r.u8()?;
            let max_version = r.u8()?;
            let client_nonce = r.array::<32>()?;
            let node_name = get_node_name(&mut r)?;
            Message::ClientHello {
                node_name,
                client_nonce,
                min_version,
                max_version,
            }
        }
        SERVER_CHALLENGE => Message::ServerChallenge {
            session_id: SessionId(r.u64()?),
            version: r.u8()?,
            server_nonce: r.array()?,
        },
        CLIENT_PROOF => Message::ClientProof { proof: r.array()? },
        SESSION_ACCEPTED => Message::SessionAccepted {
            session_id: SessionId(r.u64()?),
            liveness_lease_ms: r.u32()?,
            server_proof: r.array()?,
        },
        SESSION_REJECTED => {
            let v = r.u16()?;
            Message::SessionRejected {
                reason: RejectReason::from_wire(v).ok_or(DecodeError::InvalidEnumValue {
                    field: "reject_reason",
                    value: u64::from(v),
                })?,
            }
        }
        HEARTBEAT => Message::Heartbeat { seq: r.u64()? },
        HEARTBEAT_ACK => Message::HeartbeatAck { seq: r.u64()? },
        GOODBYE => Message::Goodbye,
        REQUEST => Message::Request {
            request_id: RequestId(r.u64()?),
            body: codec::get_request(&mut r)?,
        },
        REPLY => Message::Reply {
            request_id: RequestId(r.u64()?),
            body: codec::get_reply(&mut r)?,
        },
        NOTIFY => Message::Notify {
            body: codec::get_notification(&mut r)?,
        },
        STATUS_QUERY => Message::StatusQuery,
        MEMBER_QUERY => Message::MemberQuery {
            node: get_node_name(&mut r)?,
        },
        MEMBER_STATE => Message::MemberState {
            node: get_node_name(&mut r)?,
            has_session: r.bool("member_state.has_session")?,
        },
        STATUS_TEXT => {
            let more = r.bool("status_text.more")?;
            let raw = r.bytes(r.remaining())?;
            let text = std::str::from_utf8(raw)
                .map_err(|_| DecodeError::InvalidUtf8 {
                    field: "status_text",
                })?
                .to_owned();
            Message::StatusText { more, text }
        }
        OUTPUTS_RECEIVED => Message::OutputsReceived { seq: r.u64()? },
        RESUME_SESSION => Message::ResumeSession {
            session_id: SessionId(r.u64()?),
            received: r.u64()?,
        },
        REPLICA_ATTACH => {
            let epoch = Epoch(r.u64()?);
            let incarnation = r.u64()?;
            let len = usize::from(r.u16()?);
            if len > MAX_REPLICA_ADDRESS {
                return Err(DecodeError::StringTooLong {
                    field: "replica_address",
                    len,
                    max: MAX_REPLICA_ADDRESS,
                });
            }
            let address = std::str::from_utf8(r.bytes(len)?)
                .map_err(|_| DecodeError::InvalidUtf8 {
                    field: "replica_address",
                })?
                .to_owned();
            Message::ReplicaAttach {
                epoch,
                incarnation,
                address,
            }
        }
        APPEND => Message::Append {
            epoch: Epoch(r.u64()?),
            entries: replication::get_entries(&mut r)?,
        },
        APPEND_ACK => Message::AppendAck {
            epoch: Epoch(r.u64()?),
            next_index: r.u64()?,
        },
        APPEND_REFUSED => Message::AppendRefused {
            refusal: replication::get_refusal(&mut r)?,
        },
        SNAPSHOT => {
            let epoch = Epoch(r.u64()?);
            let total = r.u64()?;
            let offset = r.u64()?;
            let len = usize::from(r.u16()?);
            if total > MAX_SNAPSHOT || len > MAX_SNAPSHOT_CHUNK {
                return Err(DecodeError::InvalidEnumValue {
                    field: "snapshot.total",
                    value: total,
                });
            }
            let chunk = r.bytes(len)?.to_vec();
            // The chunk must lie inside the snapshot.
            if offset
                .checked_add(chunk.len() as u64)
                .is_none_or(|end| end > total)
            {
                return Err(DecodeError::InvalidEnumValue {
                    field: "snapshot.offset",
                    value: offset,
                });
            }
            Message::Snapshot {
                epoch,
                total,
                offset,
                chunk,
            }
        }
        RECORDED => {
            let len = usize::from(r.u16()?);
            let config = Configuration::decode(r.bytes(len)?)?;
            Message::Recorded { config }
        }
        other => return Err(DecodeError::UnknownMessageType(other)),
    };
    r.finish(tag)?;
    Ok(msg)
}
