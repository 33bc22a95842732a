//! A client and a server core against each other in simulated time, replaying the bug
//! classes SMB Direct implementations have had: last-credit deadlock, interleaved fragments,
//! the credit-grant race, a peer that stops granting, plus fragmentation, negotiation limits
//! and keep-alive.

use std::time::Duration;

use smbdirect::codec::{
    DataHeader, DataMessage, NegotiateRequest, NegotiateResponse, SMBD_VERSION_1,
    SMB_DIRECT_RESPONSE_REQUESTED, STATUS_NOT_SUPPORTED,
};
use smbdirect::sim::{Pair, Side};
use smbdirect::{Config, ConnectionError, DecodeError, Event, SendError, Time};

fn small() -> Config {
    Config {
        receive_credit_max: 8,
        send_credit_target: 8,
        ..Config::default()
    }
}

fn connected(client: Config, server: Config) -> Pair {
    let mut p = Pair::new(client, server).expect("config");
    p.run();
    assert!(
        p.client.connected.is_some(),
        "client: {:?}",
        p.client.closed
    );
    assert!(
        p.server.connected.is_some(),
        "server: {:?}",
        p.server.closed
    );
    p
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn assert_healthy(p: &Pair) {
    assert_eq!(p.client.closed, None);
    assert_eq!(p.server.closed, None);
    assert_eq!(
        p.client.rnr, 0,
        "client got a message with no receive posted"
    );
    assert_eq!(
        p.server.rnr, 0,
        "server got a message with no receive posted"
    );
}

#[test]
fn handshake_negotiates_sizes_and_quiesces() {
    let server = Config {
        max_send_size: 4096,
        max_receive_size: 8192,
        ..small()
    };
    let p = connected(small(), server);
    let c = p.client.connected.expect("client");
    let s = p.server.connected.expect("server");
    // Each end sends at most what the other receives.
    assert_eq!(c.max_send_size, 1364);
    assert_eq!(s.max_send_size, 1364);
    assert_eq!(
        s.max_receive_size, 1364,
        "server receives at most the client's PreferredSendSize"
    );
    assert_eq!(c.peer_max_fragmented_size, 1 << 20);
    // After the handshake both ends hold credits, and `run` returned: no grant ping-pong.
    assert!(p.client.conn.send_credits() >= 2);
    assert!(p.server.conn.send_credits() >= 2);
    assert_healthy(&p);
    assert!(p.client.conn.stats().messages_sent < 4);
}

#[test]
fn small_messages_both_ways_in_order() {
    let mut p = connected(small(), small());
    for i in 0..100u8 {
        p.send(Side::Client, vec![i; 1 + usize::from(i)])
            .expect("send");
        p.send(Side::Server, vec![!i; 2 + usize::from(i)])
            .expect("send");
    }
    p.run();
    assert_healthy(&p);
    assert_eq!(p.server.received.len(), 100);
    assert_eq!(p.client.received.len(), 100);
    for (i, m) in p.server.received.iter().enumerate() {
        assert_eq!(m, &vec![i as u8; 1 + i]);
    }
    for (i, m) in p.client.received.iter().enumerate() {
        assert_eq!(m, &vec![!(i as u8); 2 + i]);
    }
}

#[test]
fn large_messages_fragment_and_reassemble_without_interleaving() {
    let mut p = connected(small(), small());
    let big = pattern(1 << 20, 7);
    let medium = pattern(100_000, 9);
    p.send(Side::Client, big.clone()).expect("send");
    // Queued while the first is being fragmented: must follow it, not interleave with it.
    for _ in 0..50 {
        p.step();
    }
    p.send(Side::Client, medium.clone()).expect("send");
    p.send(Side::Client, b"tail".to_vec()).expect("send");
    p.send(Side::Server, big.clone()).expect("send");
    p.run();
    assert_healthy(&p);
    assert_eq!(
        p.server.received,
        vec![big.clone(), medium, b"tail".to_vec()]
    );
    assert_eq!(p.client.received, vec![big]);
    // Every message on the wire fits the receiver's buffers, and the fragment sequence is
    // consistent: each fragment's RemainingDataLength is what the previous one announced
    // minus its own length.
    let mut expected: Option<u32> = None;
    for m in &p.server.wire_log[1..] {
        assert!(m.len() <= 1364);
        let d = DataMessage::decode(m, 1 << 20).expect("valid");
        let (len, rem) = (d.payload.len() as u32, d.header.remaining_data_length);
        if len == 0 {
            assert_eq!(rem, 0);
            continue;
        }
        if let Some(e) = expected {
            assert_eq!(len + rem, e, "fragments interleaved");
        }
        expected = (rem != 0).then_some(rem);
    }
    assert_eq!(
        p.send(Side::Client, vec![0; (1 << 20) + 1]),
        Err(SendError::TooLarge {
            len: (1 << 20) + 1,
            max: 1 << 20
        })
    );
    assert_eq!(p.send(Side::Client, Vec::new()), Err(SendError::Empty));
}

#[test]
fn interleaved_fragments_from_peer_end_the_connection() {
    let mut p = connected(small(), small());
    // A peer that starts a second message before finishing the first (the multi-fragment
    // corruption class): message A announces 100 more bytes, then message B's first
    // fragment announces a different total.
    let a1 = DataHeader {
        credits_requested: 8,
        credits_granted: 0,
        flags: 0,
        remaining_data_length: 100,
    }
    .encode(&[1; 200]);
    let b1 = DataHeader {
        credits_requested: 8,
        credits_granted: 0,
        flags: 0,
        remaining_data_length: 5000,
    }
    .encode(&[2; 200]);
    p.inject(Side::Server, a1);
    p.inject(Side::Server, b1);
    p.run();
    assert_eq!(
        p.server.closed,
        Some(ConnectionError::FragmentMismatch {
            expected: 100,
            length: 200,
            remaining: 5000
        })
    );
    assert!(
        p.server.received.is_empty(),
        "a corrupt message was delivered"
    );
}

#[test]
fn empty_message_inside_a_fragmented_message_does_not_end_it() {
    let mut p = connected(small(), small());
    let h = |remaining| DataHeader {
        credits_requested: 8,
        credits_granted: 0,
        flags: 0,
        remaining_data_length: remaining,
    };
    p.inject(Side::Server, h(100).encode(&[1; 100]));
    p.inject(Side::Server, h(0).encode(&[]));
    p.inject(Side::Server, h(0).encode(&[2; 100]));
    p.run();
    assert_healthy(&p);
    let mut want = vec![1; 100];
    want.extend([2; 100]);
    assert_eq!(p.server.received, vec![want]);
}

/// Both ends flood each other with only two credits while reposting lags. An end that
/// spends its last credit on a message that grants nothing leaves both at zero credits,
/// each waiting for the other's grant: nothing more is ever delivered.
#[test]
fn last_credit_is_kept_for_a_grant_no_deadlock() {
    let tight = Config {
        receive_credit_max: 3,
        send_credit_target: 1,
        ..Config::default()
    };
    let mut p = connected(tight.clone(), tight);
    p.client.auto_repost = false;
    p.server.auto_repost = false;
    for i in 0..40u8 {
        p.send(Side::Client, vec![i; 3000]).expect("send");
        p.send(Side::Server, vec![!i; 3000]).expect("send");
    }
    p.run();
    // Stuck on reposts: every end still holds a credit to carry its grant.
    assert!(p.client.conn.send_credits() >= 1);
    assert!(p.server.conn.send_credits() >= 1);
    p.client.auto_repost = true;
    p.server.auto_repost = true;
    p.run();
    assert_healthy(&p);
    assert_eq!(p.server.received.len(), 40);
    assert_eq!(p.client.received.len(), 40);
    assert_eq!(p.client.received[39], vec![!39u8; 3000]);
}

/// Credits may only be granted for receives that are really posted. The server's reposting
/// lags: the client must never have more messages in flight than the server has receives
/// (no RNR), and once reposts happen the server must grant on its own, with nothing of its
/// own to send, or the client waits forever.
#[test]
fn credit_grant_waits_for_reposted_receives() {
    let mut p = connected(small(), small());
    p.server.auto_repost = false;
    for i in 0..30u8 {
        p.send(Side::Client, vec![i; 500]).expect("send");
    }
    p.run();
    let delivered = p.server.received.len();
    assert!(
        delivered < 30,
        "server received {delivered} without reposting"
    );
    assert_eq!(p.server.rnr, 0);
    // Repost one buffer at a time: each becomes one grant, promptly.
    while p.server.received.len() < 30 {
        let before = p.server.received.len();
        p.repost(Side::Server, 1);
        p.run();
        assert!(
            p.server.received.len() > before || p.server.conn.receive_deficit() == 0,
            "repost did not lead to a grant"
        );
        assert_eq!(p.server.rnr, 0);
    }
    assert_healthy(&p);
    for (i, m) in p.server.received.iter().enumerate() {
        assert_eq!(m, &vec![i as u8; 500]);
    }
}

/// A grant that arrives while the receiver's own reposts are still pending must not be
/// counted against receives it does not have: the client reposts late, the server sends.
#[test]
fn grant_arriving_before_and_after_reposts() {
    let mut p = connected(small(), small());
    p.client.auto_repost = false;
    for i in 0..20u8 {
        p.send(Side::Server, vec![i; 2000]).expect("send");
        p.send(Side::Client, vec![i; 100]).expect("send");
    }
    p.run();
    assert_eq!(p.client.rnr, 0);
    p.client.auto_repost = true;
    p.run();
    assert_healthy(&p);
    assert_eq!(p.client.received.len(), 20);
    assert_eq!(p.server.received.len(), 20);
}

/// A server that never reposts: the client's queued data must fail with a typed error once
/// the credit timeout passes, not wait forever.
#[test]
fn peer_that_stops_granting_times_out() {
    let mut p = connected(small(), small());
    p.server.auto_repost = false;
    for _ in 0..40 {
        p.send(Side::Client, vec![1; 1000]).expect("send");
    }
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.client.closed, Some(ConnectionError::SendCreditTimeout));
    assert_eq!(p.server.rnr, 0);
}

#[test]
fn keepalive_keeps_an_idle_connection_up() {
    // Only the client's idle timer fires in the test window: the connection survives only
    // if the server answers SMB_DIRECT_RESPONSE_REQUESTED.
    let patient = Config {
        keepalive_interval: Duration::from_secs(100_000),
        ..small()
    };
    let mut p = connected(small(), patient);
    p.run_for(Duration::from_secs(600));
    assert_healthy(&p);
    let asked = p.client.conn.stats().keepalives_sent;
    assert!(asked >= 4, "keep-alives sent: {asked}");
    assert_eq!(p.server.conn.stats().keepalives_sent, 0);
    let flagged = p
        .server
        .wire_log
        .iter()
        .chain(&p.client.wire_log)
        .skip(1)
        .filter(|m| m.len() >= 6 && m[4] & SMB_DIRECT_RESPONSE_REQUESTED as u8 != 0)
        .count();
    assert!(flagged >= 4);
}

#[test]
fn unanswered_keepalive_ends_the_connection() {
    let mut p = connected(small(), small());
    // The client goes silent: nothing it is sent is processed.
    p.client.deliver = false;
    p.run_for(Duration::from_secs(600));
    assert_eq!(p.server.closed, Some(ConnectionError::IdleTimeout));
}

#[test]
fn negotiate_timeout() {
    let mut p = Pair::new(small(), small()).expect("config");
    p.server.deliver = false;
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.client.closed, Some(ConnectionError::NegotiateTimeout));
}

fn raw_server() -> smbdirect::Connection {
    let mut s = smbdirect::Connection::new(smbdirect::Role::Server, small(), Time::default())
        .expect("config");
    s.handle(Time::default(), Event::ReceivesPosted(8));
    s
}

fn closed_with(s: &mut smbdirect::Connection) -> Option<ConnectionError> {
    let mut last = None;
    while let Some(o) = s.poll_output() {
        if let smbdirect::Output::Closed(e) = o {
            last = Some(e);
        }
    }
    last
}

fn request() -> NegotiateRequest {
    NegotiateRequest {
        min_version: SMBD_VERSION_1,
        max_version: SMBD_VERSION_1,
        credits_requested: 10,
        preferred_send_size: 1364,
        max_receive_size: 1364,
        max_fragmented_size: 131_072,
    }
}

#[test]
fn invalid_negotiate_requests_end_the_connection_without_reply() {
    let cases: Vec<(Vec<u8>, ConnectionError)> = vec![
        (
            request().encode()[..19].to_vec(),
            ConnectionError::Decode(DecodeError::TooShort {
                what: "negotiate request",
                len: 19,
                min: 20,
            }),
        ),
        (
            NegotiateRequest {
                max_fragmented_size: 131_071,
                ..request()
            }
            .encode(),
            ConnectionError::Decode(DecodeError::FragmentedSizeTooSmall(131_071)),
        ),
        (
            NegotiateRequest {
                max_receive_size: 127,
                ..request()
            }
            .encode(),
            ConnectionError::Decode(DecodeError::ReceiveSizeTooSmall(127)),
        ),
        (
            NegotiateRequest {
                credits_requested: 0,
                ..request()
            }
            .encode(),
            ConnectionError::Decode(DecodeError::ZeroCredits("CreditsRequested")),
        ),
        (
            vec![0; 1365],
            ConnectionError::MessageTooLong {
                len: 1365,
                max: 1364,
            },
        ),
    ];
    for (bytes, want) in cases {
        let mut s = raw_server();
        s.handle(Time::default(), Event::Received(&bytes));
        assert_eq!(closed_with(&mut s), Some(want));
        assert_eq!(s.poll_transmit(), None);
    }
}

#[test]
fn unsupported_version_gets_not_supported_then_close() {
    let mut s = raw_server();
    let req = NegotiateRequest {
        min_version: 0x0200,
        max_version: 0x0300,
        ..request()
    };
    s.handle(Time::default(), Event::Received(&req.encode()));
    let reply = s.poll_transmit().expect("failure response").bytes;
    let r = NegotiateResponse::decode(&reply).expect("response");
    assert_eq!(r.status, STATUS_NOT_SUPPORTED);
    assert!(s.is_closed());
    assert!(matches!(
        closed_with(&mut s),
        Some(ConnectionError::Decode(
            DecodeError::UnsupportedVersion { .. }
        ))
    ));
    // And a client receiving it fails the negotiation.
    let mut c = smbdirect::Connection::new(smbdirect::Role::Client, small(), Time::default())
        .expect("config");
    c.handle(Time::default(), Event::ReceivesPosted(1));
    assert!(c.poll_transmit().is_some());
    c.handle(Time::default(), Event::Received(&reply));
    assert_eq!(
        closed_with(&mut c),
        Some(ConnectionError::Decode(DecodeError::NegotiateFailed(
            STATUS_NOT_SUPPORTED
        )))
    );
}

#[test]
fn oversized_claims_are_capped() {
    // A client asking for 65535 credits and 4 GiB sizes gets our limits, not its wishes.
    let mut s = raw_server();
    let req = NegotiateRequest {
        credits_requested: u16::MAX,
        preferred_send_size: u32::MAX,
        max_receive_size: u32::MAX,
        max_fragmented_size: u32::MAX,
        ..request()
    };
    s.handle(Time::default(), Event::Received(&req.encode()));
    let r =
        NegotiateResponse::decode(&s.poll_transmit().expect("response").bytes).expect("response");
    assert_eq!(r.status, 0);
    assert_eq!(
        r.credits_granted, 7,
        "grants only the receives still posted"
    );
    assert_eq!(r.preferred_send_size, 1364);
    assert_eq!(r.max_receive_size, 1364);
}

#[test]
fn peer_overrunning_its_credits_is_a_violation() {
    let mut p = connected(small(), small());
    let msg = DataHeader {
        credits_requested: 8,
        credits_granted: 0,
        flags: 0,
        remaining_data_length: 0,
    }
    .encode(b"x");
    // The server cannot repost, so it can never have granted more than its 8 receives; the
    // peer sends 20 anyway. The simulated NIC has spare buffers, so it is the core that must
    // notice.
    p.server.auto_repost = false;
    for _ in 0..20 {
        p.inject(Side::Server, msg.clone());
    }
    p.server.posted += 20;
    p.run();
    assert_eq!(p.server.closed, Some(ConnectionError::NoCredit));
}

/// Every mix of small credit limits: the handshake and a burst of traffic finish, and the
/// pair goes quiet afterwards (`run` panics on endless grant ping-pong).
#[test]
fn small_credit_limits_neither_deadlock_nor_ping_pong() {
    for client_target in 1..=4u16 {
        for server_target in 1..=4u16 {
            for max in 3..=6u16 {
                let cfg = |target| Config {
                    receive_credit_max: max,
                    send_credit_target: target,
                    ..Config::default()
                };
                let mut p = connected(cfg(client_target), cfg(server_target));
                for i in 0..10u8 {
                    p.send(Side::Client, vec![i; 2000]).expect("send");
                    p.send(Side::Server, vec![i; 700]).expect("send");
                }
                p.run();
                assert_healthy(&p);
                assert_eq!(
                    p.server.received.len(),
                    10,
                    "{client_target} {server_target} {max}"
                );
                assert_eq!(
                    p.client.received.len(),
                    10,
                    "{client_target} {server_target} {max}"
                );
                let before =
                    p.client.conn.stats().messages_sent + p.server.conn.stats().messages_sent;
                p.run();
                let after =
                    p.client.conn.stats().messages_sent + p.server.conn.stats().messages_sent;
                assert_eq!(before, after);
            }
        }
    }
}

/// Random schedules: sends of random sizes from both ends, reposts that lag by random
/// amounts, deliveries held back and released, random small limits on both ends. Whatever
/// the order, once reposting and delivery resume everything arrives intact and in order,
/// no message meets a missing receive, and no last credit is spent without a grant.
#[test]
fn random_schedules_deliver_everything() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in 0..150u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = |rng: &mut StdRng| Config {
            receive_credit_max: rng.gen_range(3..=10),
            send_credit_target: rng.gen_range(1..=10),
            max_send_size: rng.gen_range(128..=2048),
            max_receive_size: rng.gen_range(128..=2048),
            ..Config::default()
        };
        let (c, s) = (cfg(&mut rng), cfg(&mut rng));
        let mut p = connected(c, s);
        p.client.auto_repost = false;
        p.server.auto_repost = false;
        let mut to_server = Vec::new();
        let mut to_client = Vec::new();
        for _ in 0..400 {
            match rng.gen_range(0..8) {
                0 => {
                    let m = pattern(rng.gen_range(1..6000), rng.gen());
                    p.send(Side::Client, m.clone()).expect("send");
                    to_server.push(m);
                }
                1 => {
                    let m = pattern(rng.gen_range(1..6000), rng.gen());
                    p.send(Side::Server, m.clone()).expect("send");
                    to_client.push(m);
                }
                2 => p.repost(Side::Client, rng.gen_range(1..4)),
                3 => p.repost(Side::Server, rng.gen_range(1..4)),
                4 => p.client.deliver = rng.gen_bool(0.7),
                5 => p.server.deliver = rng.gen_bool(0.7),
                _ => {
                    p.step();
                }
            }
        }
        p.client.deliver = true;
        p.server.deliver = true;
        p.client.auto_repost = true;
        p.server.auto_repost = true;
        p.run();
        assert_healthy(&p);
        assert!(
            p.server.received == to_server,
            "seed {seed}: client to server differs"
        );
        assert!(
            p.client.received == to_client,
            "seed {seed}: server to client differs"
        );
    }
}

/// SEND_WITH_INVALIDATE rides on the last fragment of the message it belongs to, and only
/// on that one.
#[test]
fn invalidate_token_goes_with_the_last_fragment() {
    let mut p = connected(small(), small());
    let now = p.now;
    p.server
        .conn
        .send_with_invalidate(now, pattern(5000, 1), 0xBEEF)
        .expect("send");
    p.send(Side::Server, pattern(10, 2)).expect("send");
    let mut tokens = Vec::new();
    let mut fragments = 0;
    while let Some(t) = p.server.conn.poll_transmit() {
        let d = DataMessage::decode(&t.bytes, 1 << 20).expect("valid");
        if !d.payload.is_empty() {
            fragments += 1;
        }
        tokens.push((
            d.header.remaining_data_length,
            d.payload.len(),
            t.invalidate,
        ));
    }
    // 5000 bytes in four fragments of at most 1340, then the 10-byte message.
    assert_eq!(fragments, 5, "{tokens:?}");
    let with: Vec<_> = tokens.iter().filter(|t| t.2.is_some()).collect();
    assert_eq!(with.len(), 1, "{tokens:?}");
    assert_eq!(with[0].0, 0, "on the last fragment");
    assert_eq!(with[0].2, Some(0xBEEF));
    assert_eq!(
        tokens.last().map(|t| t.2),
        Some(None),
        "not on the next message"
    );
}
