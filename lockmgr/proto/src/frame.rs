//! Frame encoder ([`FrameWriter`]) and decoder ([`decode_frame`], [`FrameReader`]).

use std::iter::FusedIterator;

use lockmgr_engine::{
    LockRange, Notification, OpenId, Reply, Request, RequestId, SessionId, Status,
};

use crate::codec;
use crate::error::{DecodeError, EncodeError};
use crate::message::{body_len, decode_body, encode_body, msg_type, Message};
use crate::wire::{Reader, Sink};
use crate::{FRAME_HEADER_LEN, MAGIC, MAX_FRAME, MSG_FLAG_OPTIONAL, MSG_HEADER_LEN, VERSION};

// A message body length is a u16: every body that fits in a frame must be representable.
const _: () = assert!(MAX_FRAME - FRAME_HEADER_LEN - MSG_HEADER_LEN <= u16::MAX as usize);
const _: () = assert!(MAX_FRAME <= u32::MAX as usize);

/// Builds one frame by appending messages to a caller's buffer.
///
/// Nothing is allocated per message: a `Vec` buffer grows only when its capacity is exceeded
/// (reuse buffers with `clear()` to avoid even that), a fixed buffer never grows.
///
/// ```
/// use lockmgr_proto::{decode_frame, FrameWriter, Message};
/// use lockmgr_engine::SessionId;
///
/// let mut buf = Vec::new();
/// let mut w = FrameWriter::new(&mut buf, SessionId(7));
/// w.push(&Message::Heartbeat { seq: 1 }).unwrap();
/// let len = w.finish();
/// let frame = decode_frame(&buf[..len]).unwrap();
/// assert_eq!(frame.session_id(), SessionId(7));
/// ```
pub struct FrameWriter<'a> {
    out: Out<'a>,
    /// Where the frame starts in the buffer.
    start: usize,
    /// Absolute end of the frame so far.
    end: usize,
    /// Absolute index the frame may not grow past.
    limit: usize,
    count: u16,
    /// The replica-set epoch written into the header by `finish` (0: none).
    epoch: u32,
}

enum Out<'a> {
    /// Invariant: `v.len() == end` between calls.
    Vec(&'a mut Vec<u8>),
    Slice(&'a mut [u8]),
}

fn header_bytes(session_id: SessionId) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    // h[5] flags, h[6..8] message count, h[16..20] total length, h[20..24] epoch: 0 until
    // finish().
    h[8..16].copy_from_slice(&session_id.0.to_le_bytes());
    h
}

impl<'a> FrameWriter<'a> {
    /// Starts a frame at the end of `buf` (existing contents are kept, so several frames can
    /// be laid back to back).
    pub fn new(buf: &'a mut Vec<u8>, session_id: SessionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&header_bytes(session_id));
        FrameWriter {
            out: Out::Vec(buf),
            start,
            end: start + FRAME_HEADER_LEN,
            limit: start.saturating_add(MAX_FRAME),
            count: 0,
            epoch: 0,
        }
    }

    /// The replica-set epoch the frame carries (see the crate docs' header table): lockmgrd's
    /// own, or the newest a node has seen. 0 (the default) means none.
    pub fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }

    /// Starts a frame at the beginning of a fixed buffer (e.g. a ring-buffer slot). The frame is
    /// limited to `min(buf.len(), MAX_FRAME)` bytes.
    pub fn new_fixed(buf: &'a mut [u8], session_id: SessionId) -> Result<Self, EncodeError> {
        let Some(h) = buf.get_mut(..FRAME_HEADER_LEN) else {
            return Err(EncodeError::BufferTooSmall {
                len: buf.len(),
                min: FRAME_HEADER_LEN,
            });
        };
        h.copy_from_slice(&header_bytes(session_id));
        let limit = buf.len().min(MAX_FRAME);
        Ok(FrameWriter {
            out: Out::Slice(buf),
            start: 0,
            end: FRAME_HEADER_LEN,
            limit,
            count: 0,
            epoch: 0,
        })
    }

    /// Appends one message. On error the frame is left exactly as before the call:
    /// [`EncodeError::FrameFull`] means "finish this frame and push into a new one".
    pub fn push(&mut self, msg: &Message) -> Result<(), EncodeError> {
        self.push_body(msg.tag(), body_len(msg)?, |s| encode_body(s, msg))
    }

    /// Appends `Message::Reply { request_id, body: reply }` without building the `Message`
    /// (same bytes, same errors as [`FrameWriter::push`]): lockmgrd encodes every engine reply
    /// straight from the engine's output.
    pub fn push_reply(&mut self, request_id: RequestId, reply: &Reply) -> Result<(), EncodeError> {
        if let Reply::Done(st) = reply {
            // Nearly every reply (each granted, refused or released lock): one fixed-size
            // message, copied in one piece.
            const BODY: usize = 8 + codec::DONE_REPLY_LEN;
            let mut m = [0u8; MSG_HEADER_LEN + BODY];
            m[0] = msg_type::REPLY;
            m[2..4].copy_from_slice(&(BODY as u16).to_le_bytes());
            m[4..12].copy_from_slice(&request_id.0.to_le_bytes());
            m[12..].copy_from_slice(&codec::done_reply(*st));
            return self.push_bytes(&m);
        }
        self.push_body(msg_type::REPLY, 8 + codec::reply_len(reply)?, |s| {
            s.u64(request_id.0);
            codec::put_reply(s, reply)
        })
    }

    /// Appends `Message::Notify { body: notification }` without building the `Message` (same
    /// bytes, same errors as [`FrameWriter::push`]).
    pub fn push_notify(&mut self, notification: &Notification) -> Result<(), EncodeError> {
        self.push_body(
            msg_type::NOTIFY,
            codec::notification_len(notification)?,
            |s| codec::put_notification(s, notification),
        )
    }

    /// Appends `Message::Request { request_id, body: Request::Lock { open, ranges,
    /// fail_immediately } }` from borrowed ranges (same bytes, same errors as
    /// [`FrameWriter::push`]): a node encodes its lock requests without building the request's
    /// `Vec` of ranges.
    pub fn push_lock(
        &mut self,
        request_id: RequestId,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) -> Result<(), EncodeError> {
        if let [range] = ranges {
            // Nearly every lock: one range, one fixed-size message copied in one piece.
            const BODY: usize = 8 + codec::ONE_RANGE_LOCK_LEN;
            let mut m = [0u8; MSG_HEADER_LEN + BODY];
            m[0] = msg_type::REQUEST;
            m[2..4].copy_from_slice(&(BODY as u16).to_le_bytes());
            m[4..12].copy_from_slice(&request_id.0.to_le_bytes());
            m[12..].copy_from_slice(&codec::one_range_lock(open, range, fail_immediately));
            return self.push_bytes(&m);
        }
        self.push_lock_request(request_id, open, ranges, Some(fail_immediately))
    }

    /// Appends `Message::Request { request_id, body: Request::Unlock { open, ranges } }` from
    /// borrowed ranges (same bytes, same errors as [`FrameWriter::push`]).
    pub fn push_unlock(
        &mut self,
        request_id: RequestId,
        open: OpenId,
        ranges: &[LockRange],
    ) -> Result<(), EncodeError> {
        if let [range] = ranges {
            const BODY: usize = 8 + codec::ONE_RANGE_UNLOCK_LEN;
            let mut m = [0u8; MSG_HEADER_LEN + BODY];
            m[0] = msg_type::REQUEST;
            m[2..4].copy_from_slice(&(BODY as u16).to_le_bytes());
            m[4..12].copy_from_slice(&request_id.0.to_le_bytes());
            m[12..].copy_from_slice(&codec::one_range_unlock(open, range));
            return self.push_bytes(&m);
        }
        self.push_lock_request(request_id, open, ranges, None)
    }

    fn push_lock_request(
        &mut self,
        request_id: RequestId,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: Option<bool>,
    ) -> Result<(), EncodeError> {
        let len = 8 + codec::lock_request_len(ranges, fail_immediately)?;
        self.push_body(msg_type::REQUEST, len, |s| {
            s.u64(request_id.0);
            codec::put_lock_request(s, open, ranges, fail_immediately)
        })
    }

    /// Whether one more message of `need` bytes fits this frame: `FrameFull` when a new
    /// frame would take it, `MessageTooLarge` when even an empty frame cannot (or the caller
    /// would loop starting new frames forever).
    #[inline]
    fn room_for(&self, need: usize) -> Result<(), EncodeError> {
        if need <= self.limit - self.end && self.count < u16::MAX {
            return Ok(());
        }
        if self.count == 0 {
            return Err(EncodeError::MessageTooLarge {
                len: need,
                max: self.limit - self.start - FRAME_HEADER_LEN,
            });
        }
        Err(EncodeError::FrameFull)
    }

    /// Appends one whole encoded message (header and body).
    #[inline]
    fn push_bytes(&mut self, msg: &[u8]) -> Result<(), EncodeError> {
        let need = msg.len();
        self.room_for(need)?;
        let at = self.end;
        let written = match &mut self.out {
            Out::Vec(v) => {
                v.extend_from_slice(msg);
                true
            }
            Out::Slice(b) => match b.get_mut(at..at + need) {
                Some(dst) => {
                    dst.copy_from_slice(msg);
                    true
                }
                None => false,
            },
        };
        if !written {
            return Err(EncodeError::LengthMismatch);
        }
        self.end += need;
        self.count += 1;
        Ok(())
    }

    /// Appends one message header (`tag`, no flags, `body_len`) and the body `encode` writes,
    /// which must be exactly `body_len` bytes.
    #[inline]
    fn push_body(
        &mut self,
        tag: u8,
        body_len: usize,
        encode: impl FnOnce(&mut Sink<'_>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let need = MSG_HEADER_LEN + body_len;
        self.room_for(need)?;
        let at = self.end;
        let window = match &mut self.out {
            Out::Vec(v) => {
                v.resize(at + need, 0);
                v.get_mut(at..)
            }
            Out::Slice(b) => b.get_mut(at..at + need),
        };
        let mut sink = Sink::new(window.unwrap_or_default());
        sink.u8(tag);
        sink.u8(0);
        // Cannot truncate: need <= MAX_FRAME, and the const assertion bounds bodies by u16::MAX.
        sink.u16(body_len as u16);
        let result = encode(&mut sink).and_then(|()| match sink.written() {
            Some(n) if n == need => Ok(()),
            _ => Err(EncodeError::LengthMismatch),
        });
        match result {
            Ok(()) => {
                self.end += need;
                self.count += 1;
                Ok(())
            }
            Err(e) => {
                if let Out::Vec(v) = &mut self.out {
                    v.truncate(at);
                }
                Err(e)
            }
        }
    }

    /// Messages pushed so far.
    pub fn message_count(&self) -> u16 {
        self.count
    }

    /// Bytes of the frame so far, header included.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True while no message has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes still free for messages (message headers included).
    pub fn remaining(&self) -> usize {
        self.limit - self.end
    }

    /// Completes the header and returns the frame's length in bytes. For a `Vec` the frame is
    /// `buf[start..start + len]` where `start` was `buf.len()` before `new`; for a fixed
    /// buffer it is `buf[..len]`.
    pub fn finish(self) -> usize {
        let len = self.len();
        let header = match self.out {
            Out::Vec(v) => v.get_mut(self.start..),
            Out::Slice(b) => Some(b),
        }
        .and_then(|b| b.first_chunk_mut::<FRAME_HEADER_LEN>());
        if let Some(h) = header {
            h[6..8].copy_from_slice(&self.count.to_le_bytes());
            // Cannot truncate: len <= MAX_FRAME <= u32::MAX (const assertion above).
            h[16..20].copy_from_slice(&(len as u32).to_le_bytes());
            h[20..24].copy_from_slice(&self.epoch.to_le_bytes());
        }
        len
    }
}

/// A frame under construction that owns its buffer: [`FrameWriter`] without the borrow, for
/// senders that append messages one at a time as they are produced (and keep the frame in a
/// struct between calls) and send it when they flush. The buffer is reused across frames, so
/// steady-state encoding allocates nothing.
///
/// ```
/// use lockmgr_proto::{decode_frame, FrameBuf, Message};
/// use lockmgr_engine::SessionId;
///
/// let mut f = FrameBuf::new(SessionId(7));
/// f.push(&Message::Heartbeat { seq: 1 }).unwrap();
/// let frame = decode_frame(f.finish()).unwrap();
/// assert_eq!(frame.message_count(), 1);
/// f.clear();
/// assert!(f.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct FrameBuf {
    /// Always `MAX_FRAME` bytes long (zeroed once): messages are encoded in place, so a push
    /// neither grows nor zero-fills the buffer. Header (final only after `finish`) at 0.
    buf: Vec<u8>,
    /// End of the frame so far.
    end: usize,
    session_id: SessionId,
    count: u16,
    /// The replica-set epoch of the frames built here (see [`FrameWriter::set_epoch`]).
    epoch: u32,
}

impl FrameBuf {
    pub fn new(session_id: SessionId) -> Self {
        let mut f = FrameBuf {
            buf: vec![0; MAX_FRAME],
            end: 0,
            session_id,
            count: 0,
            epoch: 0,
        };
        f.clear();
        f
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Changes the session id in the header of the frame being built (e.g. when a handshake
    /// assigned the session after the first message was queued); later frames use it too.
    pub fn set_session_id(&mut self, session_id: SessionId) {
        self.session_id = session_id;
        if let Some(h) = self.buf.get_mut(8..16) {
            h.copy_from_slice(&session_id.0.to_le_bytes());
        }
    }

    /// The replica-set epoch this and later frames carry (see [`FrameWriter::set_epoch`]).
    pub fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Appends one message; same contract as [`FrameWriter::push`] (on `FrameFull`, send this
    /// frame, `clear`, and push again).
    pub fn push(&mut self, msg: &Message) -> Result<(), EncodeError> {
        let mut w = self.writer();
        let r = w.push(msg);
        (self.end, self.count) = (w.end, w.count);
        r
    }

    /// [`FrameWriter::push_reply`]: `Message::Reply` without building the `Message`.
    pub fn push_reply(&mut self, request_id: RequestId, reply: &Reply) -> Result<(), EncodeError> {
        let mut w = self.writer();
        let r = w.push_reply(request_id, reply);
        (self.end, self.count) = (w.end, w.count);
        r
    }

    /// [`FrameWriter::push_notify`]: `Message::Notify` without building the `Message`.
    pub fn push_notify(&mut self, notification: &Notification) -> Result<(), EncodeError> {
        let mut w = self.writer();
        let r = w.push_notify(notification);
        (self.end, self.count) = (w.end, w.count);
        r
    }

    /// [`FrameWriter::push_lock`]: a lock request without building the `Request`.
    pub fn push_lock(
        &mut self,
        request_id: RequestId,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) -> Result<(), EncodeError> {
        let mut w = self.writer();
        let r = w.push_lock(request_id, open, ranges, fail_immediately);
        (self.end, self.count) = (w.end, w.count);
        r
    }

    /// [`FrameWriter::push_unlock`]: an unlock request without building the `Request`.
    pub fn push_unlock(
        &mut self,
        request_id: RequestId,
        open: OpenId,
        ranges: &[LockRange],
    ) -> Result<(), EncodeError> {
        let mut w = self.writer();
        let r = w.push_unlock(request_id, open, ranges);
        (self.end, self.count) = (w.end, w.count);
        r
    }

    /// True while no message has been pushed since the last `clear`.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn message_count(&self) -> u16 {
        self.count
    }

    /// Bytes of the frame so far, header included.
    pub fn len(&self) -> usize {
        self.end
    }

    /// Completes the header and returns the frame. Pushing after `finish` without `clear`
    /// continues the same frame (`finish` again before sending it).
    pub fn finish(&mut self) -> &[u8] {
        let len = self.writer().finish();
        self.buf.get(..len).unwrap_or_default()
    }

    /// Starts a new, empty frame of the same session.
    pub fn clear(&mut self) {
        if let Some(h) = self.buf.first_chunk_mut::<FRAME_HEADER_LEN>() {
            *h = header_bytes(self.session_id);
        }
        self.end = FRAME_HEADER_LEN;
        self.count = 0;
    }

    /// Starts a new, empty frame for another session.
    pub fn reset(&mut self, session_id: SessionId) {
        self.session_id = session_id;
        self.clear();
    }

    fn writer(&mut self) -> FrameWriter<'_> {
        FrameWriter {
            out: Out::Slice(&mut self.buf),
            start: 0,
            end: self.end,
            limit: MAX_FRAME,
            count: self.count,
            epoch: self.epoch,
        }
    }
}

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub flags: u8,
    /// Messages in the frame, including optional ones this version will skip.
    pub message_count: u16,
    pub session_id: SessionId,
    /// The whole frame's length, header included.
    pub total_len: usize,
    /// The replica-set epoch of the sender (lockmgrd) or the newest it has seen (a node); 0:
    /// none (an unreplicated lockmgrd, a node that has seen no epoch yet).
    pub epoch: u32,
}

/// Parses and validates a frame header from the first [`FRAME_HEADER_LEN`] bytes of `buf`.
///
/// Stream transports use this to learn how many bytes the frame needs (`total_len`); it checks
/// everything but the message list.
pub fn decode_header(buf: &[u8]) -> Result<FrameHeader, DecodeError> {
    // One bounds check for the whole header, then fixed offsets (this is on every frame's path).
    let Some(h) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN,
            available: buf.len(),
        });
    };
    let le16 = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let le32 = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = h[4];
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let flags = h[5];
    if flags != 0 {
        return Err(DecodeError::UnsupportedFlags(flags));
    }
    let message_count = le16(6);
    let mut sid = [0u8; 8];
    sid.copy_from_slice(&h[8..16]);
    let session_id = SessionId(u64::from_le_bytes(sid));
    let total_len = le32(16) as usize;
    let epoch = le32(20);
    if total_len > MAX_FRAME {
        return Err(DecodeError::FrameTooLarge {
            len: total_len,
            max: MAX_FRAME,
        });
    }
    if total_len < FRAME_HEADER_LEN {
        return Err(DecodeError::LengthMismatch {
            declared: total_len,
            actual: FRAME_HEADER_LEN,
        });
    }
    Ok(FrameHeader {
        version,
        flags,
        message_count,
        session_id,
        total_len,
        epoch,
    })
}

/// Validates a whole frame and returns an iterator over its messages.
///
/// `buf` must be exactly one frame. The header and the framing of every message (type, flags,
/// length) are checked here, so a frame is accepted or refused as a whole; message *bodies* are
/// decoded lazily by the iterator, and a malformed body fails only its own message.
pub fn decode_frame(buf: &[u8]) -> Result<FrameReader<'_>, DecodeError> {
    if buf.len() > MAX_FRAME {
        return Err(DecodeError::FrameTooLarge {
            len: buf.len(),
            max: MAX_FRAME,
        });
    }
    let header = decode_header(buf)?;
    if header.total_len != buf.len() {
        return Err(DecodeError::LengthMismatch {
            declared: header.total_len,
            actual: buf.len(),
        });
    }
    let msgs = buf.get(FRAME_HEADER_LEN..).unwrap_or_default();
    let mut r = Reader::new(msgs);
    for _ in 0..header.message_count {
        let (_, _, len) = read_msg_header(&mut r)?;
        r.bytes(len)?;
    }
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingFrameBytes {
            extra: r.remaining(),
        });
    }
    Ok(FrameReader {
        header,
        msgs,
        pos: 0,
        left: header.message_count,
    })
}

/// Reads a message header (tag, flags, body length), rejecting undefined flags and unknown
/// mandatory types.
#[inline]
fn read_msg_header(r: &mut Reader<'_>) -> Result<(u8, u8, usize), DecodeError> {
    let [tag, flags, l0, l1] = r.array::<MSG_HEADER_LEN>()?;
    if flags & !MSG_FLAG_OPTIONAL != 0 {
        return Err(DecodeError::UnknownMessageFlags { tag, flags });
    }
    if !msg_type::is_known(tag) && flags & MSG_FLAG_OPTIONAL == 0 {
        return Err(DecodeError::UnknownMessageType(tag));
    }
    Ok((tag, flags, usize::from(u16::from_le_bytes([l0, l1]))))
}

/// Iterator over the messages of a frame validated by [`decode_frame`].
///
/// Yields one item per known message, in order; unknown messages marked optional are skipped.
/// After an `Err` for one message, iteration continues with the next (framing was already
/// validated, so message boundaries are trustworthy).
#[derive(Clone, Debug)]
pub struct FrameReader<'a> {
    header: FrameHeader,
    msgs: &'a [u8],
    pos: usize,
    left: u16,
}

impl FrameReader<'_> {
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    pub fn session_id(&self) -> SessionId {
        self.header.session_id
    }

    /// The replica-set epoch in the header ([`FrameHeader::epoch`]).
    pub fn epoch(&self) -> u32 {
        self.header.epoch
    }

    /// Messages declared by the header (including optional ones that will be skipped).
    pub fn message_count(&self) -> u16 {
        self.header.message_count
    }
}

/// A message decoded by [`FrameReader::next_incoming`]: lock and unlock requests (nearly all
/// of a lock manager's traffic) borrow their ranges from a buffer the caller reuses, so
/// decoding them allocates nothing; every other message is decoded as a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming<'r> {
    /// `Message::Request` with `Request::Lock`.
    Lock {
        request_id: RequestId,
        open: OpenId,
        ranges: &'r [LockRange],
        fail_immediately: bool,
    },
    /// `Message::Request` with `Request::Unlock`.
    Unlock {
        request_id: RequestId,
        open: OpenId,
        ranges: &'r [LockRange],
    },
    Message(Message),
}

impl Incoming<'_> {
    /// The same message as the iterator would have produced it.
    pub fn into_message(self) -> Message {
        match self {
            Incoming::Lock {
                request_id,
                open,
                ranges,
                fail_immediately,
            } => Message::Request {
                request_id,
                body: Request::Lock {
                    open,
                    ranges: ranges.to_vec(),
                    fail_immediately,
                },
            },
            Incoming::Unlock {
                request_id,
                open,
                ranges,
            } => Message::Request {
                request_id,
                body: Request::Unlock {
                    open,
                    ranges: ranges.to_vec(),
                },
            },
            Incoming::Message(m) => m,
        }
    }
}

/// A message decoded by [`FrameReader::next_output`]: `Reply::Done` replies (what a node
/// receives for nearly every request) without a [`Message`]; everything else as one.
// Returned by value and consumed at once, never stored: boxing the `Message` would only add an
// allocation to every message that is not a done reply.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// `Message::Reply { request_id, body: Reply::Done(status) }`.
    Done {
        request_id: RequestId,
        status: Status,
    },
    Message(Message),
}

impl Output {
    /// The same message as the iterator would have produced it.
    pub fn into_message(self) -> Message {
        match self {
            Output::Done { request_id, status } => Message::Reply {
                request_id,
                body: Reply::Done(status),
            },
            Output::Message(m) => m,
        }
    }
}

impl FrameReader<'_> {
    /// Like [`Iterator::next`] (same messages, same errors, same order), but lock and unlock
    /// requests are decoded into `ranges` (its previous contents are replaced) instead of a
    /// fresh `Vec`.
    pub fn next_incoming<'r>(
        &mut self,
        ranges: &'r mut Vec<LockRange>,
    ) -> Option<Result<Incoming<'r>, DecodeError>> {
        let (tag, body) = match self.next_raw()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e)),
        };
        if tag == msg_type::REQUEST {
            let mut r = Reader::new(body);
            let head = r.u64().and_then(|id| {
                Ok(codec::get_lock_request_into(&mut r, ranges)?.map(|head| (id, head)))
            });
            match head {
                Ok(Some((id, head))) => {
                    if let Err(e) = r.finish(tag) {
                        return Some(Err(e));
                    }
                    let request_id = RequestId(id);
                    return Some(Ok(match head.fail_immediately {
                        Some(fail_immediately) => Incoming::Lock {
                            request_id,
                            open: head.open,
                            ranges,
                            fail_immediately,
                        },
                        None => Incoming::Unlock {
                            request_id,
                            open: head.open,
                            ranges,
                        },
                    }));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(decode_body(tag, body).map(Incoming::Message))
    }

    /// Like [`Iterator::next`] (same messages, same errors, same order), but a
    /// `Message::Reply` carrying `Reply::Done` (nearly every reply a node receives) comes back
    /// as [`Output::Done`], without building a `Message`.
    #[inline]
    pub fn next_output(&mut self) -> Option<Result<Output, DecodeError>> {
        let (tag, body) = match self.next_raw()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e)),
        };
        if tag == msg_type::REPLY {
            if let Some((id, rest)) = body.split_first_chunk::<8>() {
                match codec::get_done_reply(rest) {
                    Ok(Some(status)) => {
                        return Some(Ok(Output::Done {
                            request_id: RequestId(u64::from_le_bytes(*id)),
                            status,
                        }))
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        Some(decode_body(tag, body).map(Output::Message))
    }

    /// The next known message's tag and body; unknown optional messages are skipped.
    fn next_raw(&mut self) -> Option<Result<(u8, &[u8]), DecodeError>> {
        while self.left > 0 {
            self.left -= 1;
            let mut r = Reader::new(self.msgs.get(self.pos..).unwrap_or_default());
            let parsed = read_msg_header(&mut r)
                .and_then(|(tag, flags, len)| Ok((tag, flags, r.bytes(len)?)));
            let (tag, flags, body) = match parsed {
                Ok(p) => p,
                // Unreachable for frames from decode_frame; stop rather than loop on garbage.
                Err(e) => {
                    self.left = 0;
                    return Some(Err(e));
                }
            };
            self.pos += r.pos();
            if msg_type::is_known(tag) {
                return Some(Ok((tag, body)));
            }
            tracing::trace!(
                tag,
                flags,
                len = body.len(),
                "skipping unknown optional message"
            );
        }
        None
    }
}

impl Iterator for FrameReader<'_> {
    type Item = Result<Message, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.next_raw()?
                .and_then(|(tag, body)| decode_body(tag, body)),
        )
    }
}

impl FusedIterator for FrameReader<'_> {}
