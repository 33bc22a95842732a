//! The allocation-free paths (`FrameBuf`, `FrameReader::next_incoming`) must be byte- and
//! message-identical to `FrameWriter` and the plain iterator.

use lockmgr_engine::{LockRange, OpenId, Reply, Request, RequestId, SessionId, Status};
use lockmgr_proto::strategies::{
    lock_range, message, notification, open_id, reply, request_id, session_id, status,
};
use lockmgr_proto::{
    decode_frame, EncodeError, FrameBuf, FrameWriter, Incoming, Message, Output, MAX_LOCK_RANGES,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn frame_of(session: SessionId, msgs: &[Message]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, session);
    for m in msgs {
        w.push(m).unwrap();
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// A reply or a notification: what lockmgrd encodes without building a `Message`.
fn output() -> impl Strategy<Value = Message> {
    prop_oneof![
        (request_id(), reply()).prop_map(|(request_id, body)| Message::Reply { request_id, body }),
        notification().prop_map(|body| Message::Notify { body }),
    ]
}

/// `push_reply` / `push_notify` for a `Reply` / `Notify` message, `push` for anything else.
fn push_direct(fb: &mut FrameBuf, m: &Message) -> Result<(), EncodeError> {
    match m {
        Message::Reply { request_id, body } => fb.push_reply(*request_id, body),
        Message::Notify { body } => fb.push_notify(body),
        other => fb.push(other),
    }
}

/// A lock or unlock request, with one range most of the time (the fixed-size path), up to
/// more ranges than a request may carry (the error path).
fn lock_request() -> impl Strategy<Value = Message> {
    let ranges = prop_oneof![
        4 => lock_range().prop_map(|r| vec![r]),
        2 => vec(lock_range(), 0..4),
        1 => vec(lock_range(), MAX_LOCK_RANGES..MAX_LOCK_RANGES + 2),
    ];
    (request_id(), open_id(), ranges, any::<Option<bool>>()).prop_map(
        |(request_id, open, ranges, fail)| Message::Request {
            request_id,
            body: match fail {
                Some(fail_immediately) => Request::Lock {
                    open,
                    ranges,
                    fail_immediately,
                },
                None => Request::Unlock { open, ranges },
            },
        },
    )
}

/// `push_lock` / `push_unlock` for a lock or unlock request, `push` for anything else.
fn push_lock_direct(fb: &mut FrameBuf, m: &Message) -> Result<(), EncodeError> {
    match m {
        Message::Request {
            request_id,
            body:
                Request::Lock {
                    open,
                    ranges,
                    fail_immediately,
                },
        } => fb.push_lock(*request_id, *open, ranges, *fail_immediately),
        Message::Request {
            request_id,
            body: Request::Unlock { open, ranges },
        } => fb.push_unlock(*request_id, *open, ranges),
        other => fb.push(other),
    }
}

fn writer_push_lock_direct(w: &mut FrameWriter<'_>, m: &Message) -> Result<(), EncodeError> {
    match m {
        Message::Request {
            request_id,
            body:
                Request::Lock {
                    open,
                    ranges,
                    fail_immediately,
                },
        } => w.push_lock(*request_id, *open, ranges, *fail_immediately),
        Message::Request {
            request_id,
            body: Request::Unlock { open, ranges },
        } => w.push_unlock(*request_id, *open, ranges),
        other => w.push(other),
    }
}

/// Mostly done replies (the fast path), some other messages, some done replies whose status
/// is outside the wire's values (written by hand below).
fn output_mix() -> impl Strategy<Value = Message> {
    prop_oneof![
        4 => (request_id(), status()).prop_map(|(request_id, st)| Message::Reply {
            request_id,
            body: Reply::Done(st),
        }),
        2 => message(),
    ]
}

proptest! {
    /// A node's lock encoders write the bytes `push(&Message)` writes, fill frames the same
    /// way (`FrameFull` at the same message) and fail the same way (too many ranges), in
    /// `FrameBuf` and in the `Vec`-backed `FrameWriter`.
    #[test]
    fn push_lock_and_unlock_match_push(
        msgs in vec(prop_oneof![4 => lock_request(), 1 => message()], 0..1500),
        s in session_id(),
    ) {
        let (mut direct, mut generic) = (FrameBuf::new(s), FrameBuf::new(s));
        let (mut buf_d, mut buf_g) = (Vec::new(), Vec::new());
        let mut w_d = FrameWriter::new(&mut buf_d, s);
        let mut w_g = FrameWriter::new(&mut buf_g, s);
        for m in &msgs {
            let (a, b) = (push_lock_direct(&mut direct, m), generic.push(m));
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(writer_push_lock_direct(&mut w_d, m), w_g.push(m));
            if a == Err(EncodeError::FrameFull) {
                prop_assert_eq!(direct.finish(), generic.finish());
                direct.clear();
                generic.clear();
                prop_assert_eq!(push_lock_direct(&mut direct, m), generic.push(m));
            }
        }
        prop_assert_eq!(direct.finish(), generic.finish());
        let (ld, lg) = (w_d.finish(), w_g.finish());
        prop_assert_eq!(&buf_d[..ld], &buf_g[..lg]);
    }

    /// `next_output` yields what the iterator yields, done replies included.
    #[test]
    fn next_output_matches_iterator(msgs in vec(output_mix(), 0..40), s in session_id()) {
        let mut fb = FrameBuf::new(s);
        for m in &msgs {
            if fb.push(m).is_err() {
                break;
            }
        }
        let bytes = fb.finish().to_vec();
        let expected: Vec<_> = decode_frame(&bytes).unwrap().collect();
        let mut reader = decode_frame(&bytes).unwrap();
        let mut got = Vec::new();
        while let Some(m) = reader.next_output() {
            got.push(m.map(Output::into_message));
        }
        prop_assert_eq!(got, expected);
    }

    /// Corrupting any byte of a frame of replies gives the same result either way (bad
    /// statuses, kinds and lengths included).
    #[test]
    fn next_output_matches_iterator_on_corruption(
        n in 1usize..4,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let msgs: Vec<Message> = (0..n as u64)
            .map(|i| Message::Reply {
                request_id: RequestId(i),
                body: if i % 2 == 0 {
                    Reply::Done(Status::Success)
                } else {
                    Reply::Closed { delete_file: true }
                },
            })
            .collect();
        let mut bytes = frame_of(SessionId(1), &msgs);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let Ok(reader) = decode_frame(&bytes) else {
            return Ok(());
        };
        let expected: Vec<_> = reader.clone().collect();
        let mut reader = reader;
        let mut got = Vec::new();
        while let Some(m) = reader.next_output() {
            got.push(m.map(Output::into_message));
        }
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    /// The direct encoders write the bytes `push(&Message)` writes, fill frames the same way
    /// (`FrameFull` at the same message), and fail the same way; the `Vec`-backed
    /// `FrameWriter` agrees too.
    #[test]
    fn push_reply_and_notify_match_push(msgs in vec(output(), 0..800), s in session_id()) {
        let (mut direct, mut generic) = (FrameBuf::new(s), FrameBuf::new(s));
        let (mut buf_d, mut buf_g) = (Vec::new(), Vec::new());
        let mut w_d = FrameWriter::new(&mut buf_d, s);
        let mut w_g = FrameWriter::new(&mut buf_g, s);
        for m in &msgs {
            let (a, b) = (push_direct(&mut direct, m), generic.push(m));
            prop_assert_eq!(&a, &b);
            let c = match m {
                Message::Reply { request_id, body } => w_d.push_reply(*request_id, body),
                Message::Notify { body } => w_d.push_notify(body),
                other => w_d.push(other),
            };
            prop_assert_eq!(&c, &w_g.push(m));
            if a == Err(EncodeError::FrameFull) {
                prop_assert_eq!(direct.finish(), generic.finish());
                direct.clear();
                generic.clear();
                prop_assert_eq!(push_direct(&mut direct, m), generic.push(m));
            }
        }
        prop_assert_eq!(direct.finish(), generic.finish());
        let (ld, lg) = (w_d.finish(), w_g.finish());
        prop_assert_eq!(&buf_d[..ld], &buf_g[..lg]);
    }

    #[test]
    fn frame_buf_matches_frame_writer(msgs in vec(message(), 0..40), s in session_id()) {
        let mut fb = FrameBuf::new(s);
        let mut frames = Vec::new();
        let mut current = Vec::new();
        for m in &msgs {
            match fb.push(m) {
                Ok(()) => current.push(m.clone()),
                Err(EncodeError::FrameFull) => {
                    frames.push((fb.finish().to_vec(), std::mem::take(&mut current)));
                    fb.clear();
                    fb.push(m).unwrap();
                    current.push(m.clone());
                }
                Err(e) => panic!("{e}"),
            }
        }
        frames.push((fb.finish().to_vec(), current));
        for (bytes, msgs) in frames {
            prop_assert_eq!(bytes, frame_of(s, &msgs));
        }
    }

    #[test]
    fn next_incoming_matches_iterator(msgs in vec(message(), 0..40), s in session_id()) {
        let mut fb = FrameBuf::new(s);
        for m in &msgs {
            if fb.push(m).is_err() {
                break;
            }
        }
        let bytes = fb.finish().to_vec();
        let expected: Vec<_> = decode_frame(&bytes).unwrap().collect();
        let mut reader = decode_frame(&bytes).unwrap();
        let mut ranges = Vec::new();
        let mut got = Vec::new();
        while let Some(m) = reader.next_incoming(&mut ranges) {
            got.push(m.map(Incoming::into_message));
        }
        prop_assert_eq!(got, expected);
    }

    /// Corrupting any byte of a frame of lock requests gives the same result either way.
    #[test]
    fn next_incoming_matches_iterator_on_corruption(
        n in 1usize..4,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let msgs: Vec<Message> = (0..n as u64)
            .map(|i| Message::Request {
                request_id: RequestId(i),
                body: if i % 2 == 0 {
                    Request::Lock {
                        open: OpenId(i),
                        ranges: vec![LockRange { offset: i, length: 3, exclusive: true }],
                        fail_immediately: true,
                    }
                } else {
                    Request::Unlock {
                        open: OpenId(i),
                        ranges: vec![LockRange { offset: i, length: 3, exclusive: false }; 2],
                    }
                },
            })
            .collect();
        let mut bytes = frame_of(SessionId(1), &msgs);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let Ok(reader) = decode_frame(&bytes) else {
            return Ok(());
        };
        let expected: Vec<_> = reader.clone().collect();
        let mut reader = reader;
        let mut ranges = Vec::new();
        let mut got = Vec::new();
        while let Some(m) = reader.next_incoming(&mut ranges) {
            got.push(m.map(Incoming::into_message));
        }
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn next_incoming_borrows_lock_ranges() {
    let r = LockRange {
        offset: 10,
        length: 5,
        exclusive: true,
    };
    let bytes = frame_of(
        SessionId(3),
        &[
            Message::Request {
                request_id: RequestId(1),
                body: Request::Lock {
                    open: OpenId(9),
                    ranges: vec![r],
                    fail_immediately: false,
                },
            },
            Message::Heartbeat { seq: 4 },
        ],
    );
    let mut reader = decode_frame(&bytes).unwrap();
    let mut ranges = Vec::with_capacity(4);
    match reader.next_incoming(&mut ranges) {
        Some(Ok(Incoming::Lock {
            request_id,
            open,
            ranges,
            fail_immediately,
        })) => {
            assert_eq!(
                (request_id, open, ranges, fail_immediately),
                (RequestId(1), OpenId(9), &[r][..], false)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reader.next_incoming(&mut ranges),
        Some(Ok(Incoming::Message(Message::Heartbeat { seq: 4 })))
    );
    assert_eq!(reader.next_incoming(&mut ranges), None);
}
