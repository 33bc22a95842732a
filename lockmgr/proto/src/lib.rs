//! lockmgr wire protocol: versioned little-endian frames, batching, session authentication.
//!
//! The transport layer moves opaque frames of at most [`MAX_FRAME`] bytes reliably; this crate
//! defines what is inside one. A frame is a header followed by `message_count` messages back to
//! back, so one frame can batch many requests, replies and notifications.
//!
//! # Frame header ([`FRAME_HEADER_LEN`] = 24 bytes, little-endian)
//!
//! | Offset | Size | Field | Meaning |
//! |--------|------|-------|---------|
//! | 0 | 4 | magic | `b"LKMP"` ([`MAGIC`]) |
//! | 4 | 1 | version | [`VERSION`] (1); other versions are refused |
//! | 5 | 1 | flags | none defined in version 1: must be 0 |
//! | 6 | 2 | message_count | number of messages that follow |
//! | 8 | 8 | session_id | the sender's session (0 before `ServerChallenge` assigns one) |
//! | 16 | 4 | total_length | whole frame including this header; <= [`MAX_FRAME`]; must equal the buffer length |
//! | 20 | 4 | epoch | the replica-set epoch (lockmgr-coord's, low 32 bits): lockmgrd's own in the frames it sends, the newest a node has seen in the node's; 0 = none (an unreplicated lockmgrd, a node before its first reply). lockmgrd drops a node's frame of an epoch older than the one the node's connection was accepted in, and a node drops frames of an epoch older than the newest it has seen (a deposed primary). Datagram transports' frame MAC covers it like the rest of the frame. Keeps the messages 8-byte aligned. |
//!
//! # Message header ([`MSG_HEADER_LEN`] = 4 bytes), then `body_length` bytes of body
//!
//! | Offset | Size | Field | Meaning |
//! |--------|------|-------|---------|
//! | 0 | 1 | type | [`msg_type`] tag |
//! | 1 | 1 | flags | bit 0 [`MSG_FLAG_OPTIONAL`]: a receiver that does not know `type` skips the message instead of rejecting the frame; other bits must be 0 |
//! | 2 | 2 | body_length | bytes of body that follow |
//!
//! Message bodies are listed in [`message`]; the engine types inside requests, replies and
//! notifications in [`codec`].
//!
//! # Robustness
//!
//! Decoding never panics and never allocates more than the input's size: every read is
//! bounds-checked, vectors are sized only after their bytes are known to be present, and lock
//! requests carry at most [`MAX_LOCK_RANGES`] ranges. Every value has exactly one encoding
//! (booleans are 0/1, undefined flag bits are rejected, bodies must be consumed exactly), so
//! decode-then-encode reproduces the input.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
mod error;
mod frame;
pub mod fuzzing;
pub mod message;
pub mod private_file;
pub mod replication;
pub mod samples;
#[cfg(any(test, feature = "proptest"))]
pub mod strategies;
mod wire;

pub use auth::{client_proof, server_proof, verify_proof, ClusterKey, Role, Transcript};
pub use error::{DecodeError, EncodeError, KeyError};
pub use frame::{
    decode_frame, decode_header, FrameBuf, FrameHeader, FrameReader, FrameWriter, Incoming, Output,
};
pub use message::{
    msg_type, split_status_text, Message, Nonce, Proof, RejectReason, MAX_NODE_NAME,
    MAX_REPLICA_ADDRESS, MAX_SNAPSHOT, MAX_SNAPSHOT_CHUNK, MAX_STATUS_TEXT,
};

/// Largest frame, header included, in bytes.
pub const MAX_FRAME: usize = 8192;
/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"LKMP";
/// The only frame version this codec speaks.
pub const VERSION: u8 = 1;
/// Size of the frame header.
pub const FRAME_HEADER_LEN: usize = 24;
/// Size of each message header.
pub const MSG_HEADER_LEN: usize = 4;
/// Message flag: receivers that do not know the message type may skip it.
pub const MSG_FLAG_OPTIONAL: u8 = 0x01;
/// Most byte ranges in one lock or unlock request. SMB2 LOCK requests from real clients carry
/// a handful; the cap bounds the work and memory one message can demand.
pub const MAX_LOCK_RANGES: usize = 64;
