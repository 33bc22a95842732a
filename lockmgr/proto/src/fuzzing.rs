//! The decode/re-encode property the fuzz target checks, shared with the corpus regression test
//! so that `cargo test` (stable, no libFuzzer) checks exactly what fuzzing checks.

use lockmgr_engine::Request;

use crate::frame::{decode_frame, FrameWriter, Incoming, Output};
use crate::message::Message;
use crate::{FRAME_HEADER_LEN, MSG_FLAG_OPTIONAL, MSG_HEADER_LEN};

/// `data` (a frame `decode_frame` accepted) with the optional flag cleared on every message.
fn without_optional_flags(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut pos = FRAME_HEADER_LEN;
    while let Some(h) = out.get_mut(pos..pos + MSG_HEADER_LEN) {
        h[1] &= !MSG_FLAG_OPTIONAL;
        pos += MSG_HEADER_LEN + usize::from(u16::from_le_bytes([h[2], h[3]]));
    }
    out
}

/// What [`check_roundtrip`] concluded about an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `decode_frame` refused the frame.
    FrameRejected,
    /// The frame was accepted but at least one message body was refused.
    MessageRejected,
    /// Every message decoded, and re-encoding reproduced them.
    RoundTripped,
}

/// Decodes `data`; if every message decodes, re-encodes them and checks the result.
///
/// Re-encoding must reproduce `data` byte for byte when no optional unknown message was
/// skipped (encodings are canonical; the one exception is [`MSG_FLAG_OPTIONAL`] on a known
/// message, which the encoder never sets), and must decode to the same messages in any case.
/// `Err` describes a violated property (a codec bug), never merely invalid input.
pub fn check_roundtrip(data: &[u8]) -> Result<Outcome, String> {
    let Ok(frame) = decode_frame(data) else {
        return Ok(Outcome::FrameRejected);
    };
    let session = frame.session_id();
    let epoch = frame.epoch();
    let declared = frame.message_count();
    // The allocation-free decoders (lockmgrd's `next_incoming`, a node's `next_output`) yield
    // exactly what the iterator yields, errors included.
    let expected: Vec<_> = frame.clone().collect();
    let mut r = frame.clone();
    let mut ranges = Vec::new();
    let mut incoming = Vec::with_capacity(expected.len());
    while let Some(m) = r.next_incoming(&mut ranges) {
        incoming.push(m.map(Incoming::into_message));
    }
    if incoming != expected {
        return Err(format!(
            "next_incoming differs from the iterator:\n{incoming:?}\n{expected:?}"
        ));
    }
    let mut r = frame.clone();
    let mut outputs = Vec::with_capacity(expected.len());
    while let Some(m) = r.next_output() {
        outputs.push(m.map(Output::into_message));
    }
    if outputs != expected {
        return Err(format!(
            "next_output differs from the iterator:\n{outputs:?}\n{expected:?}"
        ));
    }
    let msgs: Vec<Message> = match expected.into_iter().collect::<Result<_, _>>() {
        Ok(m) => m,
        Err(_) => return Ok(Outcome::MessageRejected),
    };
    let mut buf = Vec::with_capacity(data.len());
    let mut w = FrameWriter::new(&mut buf, session);
    w.set_epoch(epoch);
    for m in &msgs {
        w.push(m)
            .map_err(|e| format!("re-encoding decoded message {m:?} failed: {e}"))?;
    }
    let len = w.finish();
    // The direct encoders (a node's lock requests, lockmgrd's replies and notifications)
    // write the same bytes.
    let mut direct = Vec::with_capacity(data.len());
    let mut d = FrameWriter::new(&mut direct, session);
    d.set_epoch(epoch);
    for m in &msgs {
        match m {
            Message::Request {
                request_id,
                body:
                    Request::Lock {
                        open,
                        ranges,
                        fail_immediately,
                    },
            } => d.push_lock(*request_id, *open, ranges, *fail_immediately),
            Message::Request {
                request_id,
                body: Request::Unlock { open, ranges },
            } => d.push_unlock(*request_id, *open, ranges),
            Message::Reply { request_id, body } => d.push_reply(*request_id, body),
            Message::Notify { body } => d.push_notify(body),
            other => d.push(other),
        }
        .map_err(|e| format!("direct encoding of {m:?} failed: {e}"))?;
    }
    d.finish();
    if direct != buf {
        return Err(format!(
            "direct encoders differ from push:\n {direct:02x?}\n {buf:02x?}"
        ));
    }
    if len != buf.len() {
        return Err(format!(
            "finish() returned {len}, buffer holds {}",
            buf.len()
        ));
    }
    if usize::from(declared) == msgs.len() && buf != without_optional_flags(data) {
        return Err(format!(
            "re-encoding is not byte-identical:\n in:  {data:02x?}\n out: {buf:02x?}"
        ));
    }
    let again = decode_frame(&buf)
        .map_err(|e| format!("re-encoded frame does not decode: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("re-encoded message does not decode: {e}"))?;
    if again != msgs {
        return Err(format!(
            "messages changed in round trip:\n{msgs:?}\n{again:?}"
        ));
    }
    Ok(Outcome::RoundTripped)
}
