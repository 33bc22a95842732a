//! Malformed input: every failure is a clean `DecodeError`, never a panic.

use lockmgr_engine::SessionId;
use lockmgr_proto::fuzzing::{check_roundtrip, Outcome};
use lockmgr_proto::{
    decode_frame, msg_type, samples, DecodeError, FrameWriter, Message, FRAME_HEADER_LEN,
    MAX_FRAME, MAX_LOCK_RANGES, MSG_FLAG_OPTIONAL, MSG_HEADER_LEN,
};

fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, SessionId(5));
    for m in msgs {
        w.push(m).unwrap();
    }
    w.finish();
    buf
}

/// Builds a frame from raw messages (tag, flags, body) with consistent header lengths.
fn raw_frame(msgs: &[(u8, u8, &[u8])]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"LKMP");
    buf.push(1);
    buf.push(0);
    buf.extend_from_slice(&(msgs.len() as u16).to_le_bytes());
    buf.extend_from_slice(&5u64.to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    for (tag, flags, body) in msgs {
        buf.push(*tag);
        buf.push(*flags);
        buf.extend_from_slice(&(body.len() as u16).to_le_bytes());
        buf.extend_from_slice(body);
    }
    let len = buf.len() as u32;
    buf[16..20].copy_from_slice(&len.to_le_bytes());
    buf
}

/// The (tag, body) of a message as encoded.
fn body_of(m: &Message) -> (u8, Vec<u8>) {
    let buf = encode(std::slice::from_ref(m));
    (m.tag(), buf[FRAME_HEADER_LEN + MSG_HEADER_LEN..].to_vec())
}

fn first_message(buf: &[u8]) -> Result<Message, DecodeError> {
    decode_frame(buf)?.next().expect("one message")
}

#[test]
fn raw_frame_helper_matches_encoder() {
    let m = samples::lock_request();
    let (tag, body) = body_of(&m);
    assert_eq!(raw_frame(&[(tag, 0, &body)]), encode(&[m]));
}

#[test]
fn every_prefix_of_a_valid_frame_is_rejected() {
    let buf = encode(&samples::all_messages());
    for n in 0..buf.len() {
        let err = decode_frame(&buf[..n]).unwrap_err();
        if n < FRAME_HEADER_LEN {
            assert!(matches!(err, DecodeError::Truncated { .. }), "{n}: {err}");
        } else {
            assert_eq!(
                err,
                DecodeError::LengthMismatch {
                    declared: buf.len(),
                    actual: n
                }
            );
        }
    }
}

#[test]
fn every_truncated_body_is_rejected_as_truncated() {
    for m in samples::all_messages() {
        if matches!(m, Message::StatusText { .. }) {
            continue; // its text is "the rest of the body": a shorter body is another text
        }
        let (tag, body) = body_of(&m);
        for n in 0..body.len() {
            let buf = raw_frame(&[(tag, 0, &body[..n])]);
            let err = first_message(&buf).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "{m:?} cut to {n}: {err}"
            );
        }
    }
}

#[test]
fn every_extended_body_is_rejected() {
    for m in samples::all_messages() {
        if matches!(m, Message::StatusText { .. }) {
            continue;
        }
        let (tag, mut body) = body_of(&m);
        body.push(0);
        let buf = raw_frame(&[(tag, 0, &body)]);
        assert_eq!(
            first_message(&buf),
            Err(DecodeError::TrailingBodyBytes { tag, extra: 1 }),
            "{m:?}"
        );
    }
}

#[test]
fn header_errors() {
    let good = encode(&[Message::Goodbye]);
    let with = |at: usize, v: u8| {
        let mut b = good.clone();
        b[at] = v;
        decode_frame(&b).unwrap_err()
    };
    assert_eq!(with(0, b'X'), DecodeError::BadMagic(*b"XKMP"));
    assert_eq!(with(4, 2), DecodeError::UnsupportedVersion(2));
    assert_eq!(with(5, 0x80), DecodeError::UnsupportedFlags(0x80));
    // Bytes 20..24 are the epoch now: any value decodes.
    assert_eq!(
        decode_frame(&{
            let mut b = good.clone();
            b[20] = 1;
            b
        })
        .unwrap()
        .epoch(),
        1
    );
    // Count larger than the messages present.
    assert!(matches!(with(6, 2), DecodeError::Truncated { .. }));
    // Count smaller than the messages present.
    assert_eq!(
        with(6, 0),
        DecodeError::TrailingFrameBytes {
            extra: good.len() - FRAME_HEADER_LEN
        }
    );
    // Declared length below the header size.
    assert!(matches!(
        with(16, 3),
        DecodeError::LengthMismatch { declared: 3, .. }
    ));
    // Declared length above MAX_FRAME.
    let mut b = good.clone();
    b[16..20].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
    assert!(matches!(
        decode_frame(&b),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // Buffer above MAX_FRAME.
    let big = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(
        decode_frame(&big),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // Buffer longer than the declared frame.
    let mut b = good.clone();
    b.push(0);
    assert_eq!(
        decode_frame(&b).unwrap_err(),
        DecodeError::LengthMismatch {
            declared: good.len(),
            actual: good.len() + 1
        }
    );
}

#[test]
fn unknown_mandatory_message_rejects_the_frame() {
    let buf = raw_frame(&[(msg_type::GOODBYE, 0, &[]), (0x7f, 0, &[1, 2, 3])]);
    assert_eq!(
        decode_frame(&buf).unwrap_err(),
        DecodeError::UnknownMessageType(0x7f)
    );
}

#[test]
fn unknown_optional_message_is_skipped() {
    let hb = 9u64.to_le_bytes();
    let buf = raw_frame(&[
        (0x7f, MSG_FLAG_OPTIONAL, &[1, 2, 3]),
        (msg_type::HEARTBEAT, 0, &hb),
        (0x80, MSG_FLAG_OPTIONAL, &[]),
    ]);
    let frame = decode_frame(&buf).unwrap();
    assert_eq!(frame.message_count(), 3);
    let got: Vec<_> = frame.collect();
    assert_eq!(got, vec![Ok(Message::Heartbeat { seq: 9 })]);
    // A known type marked optional is still decoded.
    let buf = raw_frame(&[(msg_type::HEARTBEAT, MSG_FLAG_OPTIONAL, &hb)]);
    assert_eq!(first_message(&buf), Ok(Message::Heartbeat { seq: 9 }));
    assert_eq!(check_roundtrip(&buf), Ok(Outcome::RoundTripped));
}

#[test]
fn unknown_message_flags_reject_the_frame() {
    let buf = raw_frame(&[(msg_type::GOODBYE, 0x02, &[])]);
    assert_eq!(
        decode_frame(&buf).unwrap_err(),
        DecodeError::UnknownMessageFlags {
            tag: msg_type::GOODBYE,
            flags: 0x02
        }
    );
}

#[test]
fn bad_body_fails_only_its_own_message() {
    let hb = 1u64.to_le_bytes();
    let buf = raw_frame(&[
        (msg_type::SESSION_REJECTED, 0, &[0, 0]),
        (msg_type::HEARTBEAT, 0, &hb),
    ]);
    let got: Vec<_> = decode_frame(&buf).unwrap().collect();
    assert_eq!(
        got,
        vec![
            Err(DecodeError::InvalidEnumValue {
                field: "reject_reason",
                value: 0
            }),
            Ok(Message::Heartbeat { seq: 1 }),
        ]
    );
    assert_eq!(check_roundtrip(&buf), Ok(Outcome::MessageRejected));
}

/// Decodes a Request body assembled from parts: request id 1, then `rest`.
fn request_body(rest: &[u8]) -> Result<Message, DecodeError> {
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(rest);
    first_message(&raw_frame(&[(msg_type::REQUEST, 0, &body)]))
}

fn invalid(field: &'static str, value: u64) -> Result<Message, DecodeError> {
    Err(DecodeError::InvalidEnumValue { field, value })
}

#[test]
fn invalid_enum_values_are_rejected() {
    let open = 3u64.to_le_bytes();
    assert_eq!(request_body(&[0]), invalid("request.kind", 0));
    assert_eq!(request_body(&[200]), invalid("request.kind", 200));
    // SetDeletePending with delete = 2.
    let mut b = vec![3];
    b.extend_from_slice(&open);
    b.push(2);
    assert_eq!(request_body(&b), invalid("set_delete_pending.delete", 2));
    // OplockBreakAck with level 2.
    let mut b = vec![8];
    b.extend_from_slice(&open);
    b.push(2);
    assert_eq!(request_body(&b), invalid("oplock_break_ack.level", 2));
    // LeaseBreakAck with state 8.
    let mut b = vec![9];
    b.extend_from_slice(&[0; 32]);
    b.push(8);
    assert_eq!(request_body(&b), invalid("lease_break_ack.state", 8));
    // Lock range with exclusive = 3.
    let mut b = vec![4];
    b.extend_from_slice(&open);
    b.push(0);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    b.push(3);
    assert_eq!(request_body(&b), invalid("lock_range.exclusive", 3));
    // Open with an undefined flag bit and with an unknown caching kind.
    let mut b = vec![1];
    b.extend_from_slice(&[0; 16 + 4 + 4]);
    b.push(0x40);
    b.extend_from_slice(&[0; 16]);
    b.push(0);
    assert_eq!(request_body(&b), invalid("open.flags", 0x40));
    // Open with the link flag and link 0 (which is sent without the flag).
    let mut b = vec![1];
    b.extend_from_slice(&[0; 16 + 4 + 4]);
    b.push(0x10);
    b.extend_from_slice(&[0; 16]);
    b.push(0);
    b.extend_from_slice(&[0; 8]);
    assert_eq!(request_body(&b), invalid("open.link", 0));
    let mut b = vec![1];
    b.extend_from_slice(&[0; 16 + 4 + 4 + 1 + 16]);
    b.push(3);
    assert_eq!(request_body(&b), invalid("oplock_request.kind", 3));
    // Lease with undefined flags.
    let mut b = vec![1];
    b.extend_from_slice(&[0; 16 + 4 + 4 + 1 + 16]);
    b.extend_from_slice(&[2]);
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&[7, 8]);
    assert_eq!(request_body(&b), invalid("lease.flags", 8));

    // Reply: unknown kind, unknown status.
    let reply = |rest: &[u8]| {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(rest);
        first_message(&raw_frame(&[(msg_type::REPLY, 0, &body)]))
    };
    assert_eq!(reply(&[200]), invalid("reply.kind", 200));
    assert_eq!(reply(&[3, 0xe7, 0x03]), invalid("status", 999));
    // Notification: unknown kind, lease break with undefined flags.
    let notify = |body: &[u8]| first_message(&raw_frame(&[(msg_type::NOTIFY, 0, body)]));
    assert_eq!(notify(&[0]), invalid("notification.kind", 0));
    let mut b = vec![2];
    b.extend_from_slice(&[0; 32]);
    b.extend_from_slice(&[7, 3, 0x04]);
    assert_eq!(notify(&b), invalid("lease_break.flags", 4));
    // StatusText with more = 2.
    let st = first_message(&raw_frame(&[(msg_type::STATUS_TEXT, 0, &[2, b'a'])]));
    assert_eq!(st, invalid("status_text.more", 2));
}

#[test]
fn too_many_ranges_are_rejected_before_allocating() {
    for count in [MAX_LOCK_RANGES as u16 + 1, u16::MAX] {
        let mut b = vec![5];
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        assert_eq!(
            request_body(&b),
            Err(DecodeError::TooManyRanges {
                count: count.into(),
                max: MAX_LOCK_RANGES
            })
        );
    }
    // Within the cap but with the ranges missing: truncated, not an allocation of 64 ranges.
    let mut b = vec![5];
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes());
    assert!(matches!(
        request_body(&b),
        Err(DecodeError::Truncated {
            needed: 1088,
            available: 0
        })
    ));
}

#[test]
fn invalid_strings_are_rejected() {
    let hello = |name: &[u8], len: u8| {
        let mut b = vec![1, 1];
        b.extend_from_slice(&[0; 32]);
        b.push(len);
        b.extend_from_slice(name);
        first_message(&raw_frame(&[(msg_type::CLIENT_HELLO, 0, &b)]))
    };
    assert_eq!(
        hello(&[0xff, 0xfe], 2),
        Err(DecodeError::InvalidUtf8 { field: "node_name" })
    );
    assert_eq!(
        hello(&[b'a'; 65], 65),
        Err(DecodeError::StringTooLong {
            field: "node_name",
            len: 65,
            max: 64
        })
    );
    assert!(matches!(
        hello(&[b'a'; 64], 64),
        Ok(Message::ClientHello { node_name, .. }) if node_name.len() == 64
    ));
    // A multi-byte character cut in half.
    let st = first_message(&raw_frame(&[(msg_type::STATUS_TEXT, 0, &[0, 0xe2, 0x82])]));
    assert_eq!(
        st,
        Err(DecodeError::InvalidUtf8 {
            field: "status_text"
        })
    );
}

#[test]
fn byte_corruption_never_panics_and_roundtrips_when_accepted() {
    let buf = encode(&samples::all_messages());
    let mut accepted = 0;
    for i in 0..buf.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut b = buf.clone();
            b[i] ^= mask;
            match check_roundtrip(&b) {
                Ok(Outcome::RoundTripped) => accepted += 1,
                Ok(_) => {}
                Err(e) => panic!("byte {i} ^ {mask:#x}: {e}"),
            }
        }
    }
    // Flips inside ids and nonces stay valid: the property was exercised on accepted frames too.
    assert!(accepted > buf.len());
}
