//! Frame encoder ([`FrameWriter`]) and decoder ([`decode_frame`], [`FrameReader`]).

use std::iter::FusedIterator;

use lockmgr_engine::SessionId;

use crate::error::{DecodeError, EncodeError};
use crate::message::{decode_body, encode_body, msg_type, Message};
use crate::wire::{Out, Reader, Sink};
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
    sink: Sink<'a>,
    start: usize,
    count: u16,
}

impl<'a> FrameWriter<'a> {
    /// Starts a frame at the end of `buf` (existing contents are kept, so several frames can
    /// be laid back to back).
    pub fn new(buf: &'a mut Vec<u8>, session_id: SessionId) -> Self {
        let start = buf.len();
        let mut w = FrameWriter {
            sink: Sink::new(Out::Vec(buf), start.saturating_add(MAX_FRAME)),
            start,
            count: 0,
        };
        w.put_header(session_id);
        w
    }

    /// Starts a frame at the beginning of a fixed buffer (e.g. a ring-buffer slot). The frame is
    /// limited to `min(buf.len(), MAX_FRAME)` bytes.
    pub fn new_fixed(buf: &'a mut [u8], session_id: SessionId) -> Result<Self, EncodeError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Err(EncodeError::BufferTooSmall {
                len: buf.len(),
                min: FRAME_HEADER_LEN,
            });
        }
        let limit = buf.len().min(MAX_FRAME);
        let mut w = FrameWriter {
            sink: Sink::new(Out::Slice { buf, len: 0 }, limit),
            start: 0,
            count: 0,
        };
        w.put_header(session_id);
        Ok(w)
    }

    fn put_header(&mut self, session_id: SessionId) {
        self.sink.put(&MAGIC);
        self.sink.u8(VERSION);
        self.sink.u8(0); // flags
        self.sink.u16(0); // message count, patched by finish()
        self.sink.u64(session_id.0);
        self.sink.u32(0); // total length, patched by finish()
        self.sink.u32(0); // reserved
    }

    /// Appends one message. On error the frame is left exactly as before the call:
    /// [`EncodeError::FrameFull`] means "finish this frame and push into a new one".
    pub fn push(&mut self, msg: &Message) -> Result<(), EncodeError> {
        if self.count == u16::MAX {
            return Err(EncodeError::FrameFull);
        }
        let mark = self.sink.len();
        self.sink.put(&[msg.tag(), 0, 0, 0]);
        if let Err(e) = encode_body(&mut self.sink, msg) {
            self.sink.truncate(mark);
            return Err(e);
        }
        if self.sink.overflowed() {
            self.sink.truncate(mark);
            if self.count == 0 {
                // Even an empty frame cannot hold it: say so, or the caller would loop
                // starting new frames forever.
                return Err(EncodeError::MessageTooLarge {
                    len: msg.encoded_len()?,
                    max: self.capacity() - FRAME_HEADER_LEN,
                });
            }
            return Err(EncodeError::FrameFull);
        }
        let body_len = self.sink.len() - mark - MSG_HEADER_LEN;
        // Cannot truncate: the const assertion above bounds every in-frame body by u16::MAX.
        self.sink.patch(mark + 2, &(body_len as u16).to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Messages pushed so far.
    pub fn message_count(&self) -> u16 {
        self.count
    }

    /// Bytes of the frame so far, header included.
    pub fn len(&self) -> usize {
        self.sink.len() - self.start
    }

    /// True while no message has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes still free for messages (message headers included).
    pub fn remaining(&self) -> usize {
        self.capacity() - self.len()
    }

    /// The most bytes this frame can grow to, header included.
    fn capacity(&self) -> usize {
        self.sink.limit() - self.start
    }

    /// Completes the header and returns the frame's length in bytes. For a `Vec` the frame is
    /// `buf[start..start + len]` where `start` was `buf.len()` before `new`; for a fixed
    /// buffer it is `buf[..len]`.
    pub fn finish(mut self) -> usize {
        let len = self.len();
        let start = self.start;
        self.sink.patch(start + 6, &self.count.to_le_bytes());
        // Cannot truncate: len <= MAX_FRAME <= u32::MAX (const assertion above).
        self.sink.patch(start + 16, &(len as u32).to_le_bytes());
        len
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
}

/// Parses and validates a frame header from the first [`FRAME_HEADER_LEN`] bytes of `buf`.
///
/// Stream transports use this to learn how many bytes the frame needs (`total_len`); it checks
/// everything but the message list.
pub fn decode_header(buf: &[u8]) -> Result<FrameHeader, DecodeError> {
    let mut r = Reader::new(buf);
    let magic = r.array::<4>()?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let flags = r.u8()?;
    if flags != 0 {
        return Err(DecodeError::UnsupportedFlags(flags));
    }
    let message_count = r.u16()?;
    let session_id = SessionId(r.u64()?);
    let total_len = r.u32()? as usize;
    let reserved = r.u32()?;
    if reserved != 0 {
        return Err(DecodeError::ReservedNotZero(reserved));
    }
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
        read_msg_header(&mut r)?;
        let len = usize::from(r.u16()?);
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

/// Reads tag and flags, rejecting undefined flags and unknown mandatory types.
fn read_msg_header(r: &mut Reader<'_>) -> Result<(u8, u8), DecodeError> {
    let tag = r.u8()?;
    let flags = r.u8()?;
    if flags & !MSG_FLAG_OPTIONAL != 0 {
        return Err(DecodeError::UnknownMessageFlags { tag, flags });
    }
    if !msg_type::is_known(tag) && flags & MSG_FLAG_OPTIONAL == 0 {
        return Err(DecodeError::UnknownMessageType(tag));
    }
    Ok((tag, flags))
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

    /// Messages declared by the header (including optional ones that will be skipped).
    pub fn message_count(&self) -> u16 {
        self.header.message_count
    }
}

impl Iterator for FrameReader<'_> {
    type Item = Result<Message, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            self.left -= 1;
            let mut r = Reader::new(self.msgs.get(self.pos..).unwrap_or_default());
            let parsed = read_msg_header(&mut r).and_then(|(tag, flags)| {
                let len = usize::from(r.u16()?);
                Ok((tag, flags, r.bytes(len)?))
            });
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
                return Some(decode_body(tag, body));
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

impl FusedIterator for FrameReader<'_> {}
