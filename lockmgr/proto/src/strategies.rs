//! proptest strategies for the engine vocabulary and for protocol messages.
//!
//! Available to dependent crates with the `proptest` feature. They generate exactly the values
//! the codec accepts (e.g. lease states within RWH, at most `MAX_LOCK_RANGES` ranges).

use lockmgr_engine::{
    ClientGuid, DurableRequest, FileId, FileUsage, Lease, LeaseKey, LeaseState, LockRange,
    Notification, OpenId, OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply, Request,
    RequestId, SessionId, Status, Time,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::message::{Message, RejectReason, MAX_NODE_NAME};
use crate::MAX_LOCK_RANGES;

pub fn file_id() -> impl Strategy<Value = FileId> {
    any::<u128>().prop_map(FileId)
}
pub fn open_id() -> impl Strategy<Value = OpenId> {
    any::<u64>().prop_map(OpenId)
}
pub fn request_id() -> impl Strategy<Value = RequestId> {
    any::<u64>().prop_map(RequestId)
}
pub fn session_id() -> impl Strategy<Value = SessionId> {
    any::<u64>().prop_map(SessionId)
}
pub fn client_guid() -> impl Strategy<Value = ClientGuid> {
    any::<u128>().prop_map(ClientGuid)
}
pub fn lease_key() -> impl Strategy<Value = LeaseKey> {
    any::<u128>().prop_map(LeaseKey)
}

/// Any combination of R, W, H bits (including ones the engine will refuse, like H alone: the
/// wire carries them faithfully).
pub fn lease_state() -> impl Strategy<Value = LeaseState> {
    (0u8..=7).prop_map(LeaseState)
}

pub fn oplock_level() -> impl Strategy<Value = OplockLevel> {
    prop_oneof![
        Just(OplockLevel::None),
        Just(OplockLevel::LevelII),
        Just(OplockLevel::Exclusive),
        Just(OplockLevel::Batch),
    ]
}

pub fn status() -> impl Strategy<Value = Status> {
    // from_wire is the engine's own list, so new statuses are picked up without editing here.
    (0u16..64).prop_filter_map("not a status", Status::from_wire)
}

pub fn lease() -> impl Strategy<Value = Lease> {
    (
        lease_key(),
        lease_state(),
        option::of(lease_key()),
        option::of(any::<u16>()),
        any::<bool>(),
    )
        .prop_map(|(key, state, parent_key, epoch, breaking)| Lease {
            key,
            state,
            parent_key,
            epoch,
            breaking,
        })
}

pub fn oplock_request() -> impl Strategy<Value = OplockRequest> {
    prop_oneof![
        Just(OplockRequest::None),
        oplock_level().prop_map(OplockRequest::Oplock),
        lease().prop_map(OplockRequest::Lease),
    ]
}

pub fn oplock_grant() -> impl Strategy<Value = OplockGrant> {
    prop_oneof![
        Just(OplockGrant::None),
        oplock_level().prop_map(OplockGrant::Oplock),
        lease().prop_map(OplockGrant::Lease),
    ]
}

pub fn lock_range() -> impl Strategy<Value = LockRange> {
    (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(offset, length, exclusive)| LockRange {
        offset,
        length,
        exclusive,
    })
}

pub fn lock_ranges() -> impl Strategy<Value = Vec<LockRange>> {
    vec(lock_range(), 0..=MAX_LOCK_RANGES)
}

pub fn open_request() -> impl Strategy<Value = OpenRequest> {
    (
        file_id(),
        any::<u32>(),
        any::<u32>(),
        any::<(bool, bool, bool, bool)>(),
        client_guid(),
        oplock_request(),
        proptest::option::of(file_id()),
        any::<u64>(),
    )
        .prop_map(
            |(
                file,
                access,
                share,
                (delete_on_close, directory, overwrite, io_grant),
                client_guid,
                oplock,
                stream_base,
                link,
            )| {
                OpenRequest {
                    stream_base,
                    link,
                    file,
                    access,
                    share,
                    delete_on_close,
                    directory,
                    overwrite,
                    client_guid,
                    oplock,
                    io_grant,
                }
            },
        )
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        open_request().prop_map(Request::Open),
        (
            open_request(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            vec(any::<u8>(), 0..64)
        )
            .prop_map(|(open, key, timeout_ms, persistent, blob)| {
                Request::OpenDurable {
                    open,
                    durable: DurableRequest {
                        key,
                        timeout_ms,
                        persistent,
                        blob,
                    },
                }
            }),
        open_id().prop_map(|open| Request::Close { open }),
        (open_id(), any::<bool>())
            .prop_map(|(open, delete)| Request::SetDeletePending { open, delete }),
        (open_id(), lock_ranges(), any::<bool>()).prop_map(|(open, ranges, fail_immediately)| {
            Request::Lock {
                open,
                ranges,
                fail_immediately,
            }
        }),
        (open_id(), lock_ranges()).prop_map(|(open, ranges)| Request::Unlock { open, ranges }),
        request_id().prop_map(|request| Request::Cancel { request }),
        (open_id(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(open, offset, length, write)| Request::CheckIo {
                open,
                offset,
                length,
                write,
            }
        ),
        (open_id(), oplock_level())
            .prop_map(|(open, level)| Request::OplockBreakAck { open, level }),
        (client_guid(), lease_key(), lease_state()).prop_map(|(client_guid, key, state)| {
            Request::LeaseBreakAck {
                client_guid,
                key,
                state,
            }
        }),
        (
            open_id(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(open, key, timeout_ms, persistent, blob)| Request::SetDurable {
                    open,
                    key,
                    timeout_ms,
                    persistent,
                    blob
                }
            ),
        open_id().prop_map(|open| Request::Disconnect { open }),
        open_id().prop_map(|open| Request::BreakForRename { open }),
        open_id().prop_map(|open| Request::BreakAndClose { open }),
        (
            file_id(),
            proptest::option::of(1u64..).prop_map(|o| o.map(OpenId))
        )
            .prop_map(|(file, except)| Request::QueryUsage { file, except }),
        (open_id(), any::<u64>()).prop_map(|(open, link)| Request::Relink { open, link }),
        any::<u64>().prop_map(|key| Request::DurableLookup { key }),
        (any::<u64>(), open_id(), client_guid()).prop_map(|(key, open, client_guid)| {
            Request::Reclaim {
                key,
                open,
                client_guid,
            }
        }),
        (open_id(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(open, offset, length, write)| Request::CheckIoGrant {
                open,
                offset,
                length,
                write,
            }
        ),
        file_id().prop_map(|file| Request::IoRecallAck { file }),
        (file_id(), any::<bool>(), "\\PC{0,64}").prop_map(|(dir, tree, path)| Request::WatchDir {
            dir,
            tree,
            path
        }),
        file_id().prop_map(|dir| Request::UnwatchDir { dir }),
        dir_change().prop_map(Request::DirChange),
    ]
}

/// Changes with names of up to 64 characters, including multi-byte UTF-8.
pub fn dir_change() -> impl Strategy<Value = lockmgr_engine::DirChange> {
    (
        file_id(),
        any::<u32>(),
        any::<u32>(),
        "\\PC{0,64}",
        any::<bool>(),
    )
        .prop_map(
            |(dir, action, filter, name, subtree)| lockmgr_engine::DirChange {
                dir,
                action,
                filter,
                name,
                subtree,
            },
        )
}

pub fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (open_id(), oplock_grant()).prop_map(|(open, grant)| Reply::Opened { open, grant }),
        (open_id(), oplock_grant()).prop_map(|(open, grant)| Reply::OpenedDurable { open, grant }),
        Just(Reply::Pending),
        status().prop_map(Reply::Done),
        any::<bool>().prop_map(|delete_file| Reply::Closed { delete_file }),
        Just(Reply::ClosedDeleteBase),
        oplock_grant().prop_map(|grant| Reply::Acked { grant }),
        (open_id(), vec(any::<u8>(), 0..64)).prop_map(|(open, blob)| Reply::Durable { open, blob }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(
                |(opens, deny_delete, delete_access, deleted_links, except_deleted)| {
                    Reply::Usage(FileUsage {
                        opens,
                        deny_delete,
                        delete_access,
                        deleted_links,
                        except_deleted,
                    })
                }
            ),
        any::<u64>().prop_map(|generation| Reply::IoGranted { generation }),
        (open_id(), oplock_grant(), any::<bool>(), any::<u64>()).prop_map(
            |(open, grant, durable, generation)| Reply::OpenedIo {
                open,
                grant,
                durable,
                generation,
            }
        ),
    ]
}

pub fn notification() -> impl Strategy<Value = Notification> {
    prop_oneof![
        (open_id(), oplock_level())
            .prop_map(|(open, new_level)| Notification::OplockBreak { open, new_level }),
        (
            client_guid(),
            lease_key(),
            lease_state(),
            lease_state(),
            option::of(any::<u16>()),
            any::<bool>()
        )
            .prop_map(|(client_guid, key, current, new, epoch, ack_required)| {
                Notification::LeaseBreak {
                    client_guid,
                    key,
                    current,
                    new,
                    epoch,
                    ack_required,
                }
            }),
        (request_id(), reply())
            .prop_map(|(request, reply)| Notification::Completed { request, reply }),
        (file_id(), any::<u64>())
            .prop_map(|(file, generation)| Notification::IoRecall { file, generation }),
        (file_id(), 0u8..4, "\\PC{0,64}").prop_map(|(dir, state, path)| Notification::DirWatched {
            dir,
            state,
            path
        }),
        dir_change().prop_map(Notification::DirChanged),
    ]
}

pub fn reject_reason() -> impl Strategy<Value = RejectReason> {
    (0u16..32).prop_filter_map("not a reason", RejectReason::from_wire)
}

/// Node names of at most `MAX_NODE_NAME` bytes, including multi-byte UTF-8.
pub fn node_name() -> impl Strategy<Value = String> {
    "\\PC{0,64}".prop_filter("node name too long", |s| s.len() <= MAX_NODE_NAME)
}

pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (node_name(), any::<[u8; 32]>(), any::<u8>(), any::<u8>()).prop_map(
            |(node_name, client_nonce, min_version, max_version)| Message::ClientHello {
                node_name,
                client_nonce,
                min_version,
                max_version,
            }
        ),
        (session_id(), any::<u8>(), any::<[u8; 32]>()).prop_map(
            |(session_id, version, server_nonce)| Message::ServerChallenge {
                session_id,
                version,
                server_nonce,
            }
        ),
        any::<[u8; 32]>().prop_map(|proof| Message::ClientProof { proof }),
        (session_id(), any::<u32>(), any::<[u8; 32]>()).prop_map(
            |(session_id, liveness_lease_ms, server_proof)| Message::SessionAccepted {
                session_id,
                liveness_lease_ms,
                server_proof,
            }
        ),
        reject_reason().prop_map(|reason| Message::SessionRejected { reason }),
        any::<u64>().prop_map(|seq| Message::Heartbeat { seq }),
        any::<u64>().prop_map(|seq| Message::HeartbeatAck { seq }),
        Just(Message::Goodbye),
        (request_id(), request())
            .prop_map(|(request_id, body)| Message::Request { request_id, body }),
        (request_id(), reply()).prop_map(|(request_id, body)| Message::Reply { request_id, body }),
        notification().prop_map(|body| Message::Notify { body }),
        Just(Message::StatusQuery),
        (any::<bool>(), "\\PC{0,300}").prop_map(|(more, text)| Message::StatusText { more, text }),
        "[a-z0-9-]{0,64}".prop_map(|node| Message::MemberQuery { node }),
        ("[a-z0-9-]{0,64}", any::<bool>())
            .prop_map(|(node, has_session)| Message::MemberState { node, has_session }),
        any::<u64>().prop_map(|seq| Message::OutputsReceived { seq }),
        (session_id(), any::<u64>()).prop_map(|(session_id, received)| {
            Message::ResumeSession {
                session_id,
                received,
            }
        }),
        (epoch(), any::<u64>(), "[ -~]{0,256}").prop_map(|(epoch, incarnation, address)| {
            Message::ReplicaAttach {
                epoch,
                incarnation,
                address,
            }
        }),
        (epoch(), entries()).prop_map(|(epoch, entries)| Message::Append { epoch, entries }),
        (epoch(), any::<u64>())
            .prop_map(|(epoch, next_index)| Message::AppendAck { epoch, next_index }),
        append_refusal().prop_map(|refusal| Message::AppendRefused { refusal }),
        (
            epoch(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200)
        )
            .prop_flat_map(|(epoch, extra, chunk)| {
                let len = chunk.len() as u64;
                (0..=extra.saturating_sub(len).min(1 << 30)).prop_map(move |offset| {
                    Message::Snapshot {
                        epoch,
                        total: offset + len + (extra % 7),
                        offset,
                        chunk: chunk.clone(),
                    }
                })
            }),
        configuration().prop_map(|config| Message::Recorded { config }),
    ]
}

/// A configuration the coordination service could store (valid names and addresses, at most
/// `MAX_STANDBYS` standbys, none named like the primary).
pub fn configuration() -> impl Strategy<Value = lockmgr_replica::Configuration> {
    let member = (
        "[a-z][a-z0-9._-]{0,15}",
        "udp:[0-9.]{1,15}:[0-9]{1,5}",
        any::<u64>(),
    )
        .prop_map(|(name, address, incarnation)| {
            lockmgr_replica::Member::new(name, address, incarnation)
        });
    (
        1..u64::MAX,
        member.clone(),
        proptest::collection::vec(member, 0..=lockmgr_replica::MAX_STANDBYS),
    )
        .prop_map(|(epoch, primary, standbys)| {
            let standbys = standbys
                .into_iter()
                .filter(|s| s.name != primary.name)
                .collect();
            lockmgr_replica::Configuration {
                epoch,
                primary,
                standbys,
            }
        })
        .prop_filter("a storable configuration", |c| c.validate().is_ok())
}

pub fn epoch() -> impl Strategy<Value = lockmgr_replica::Epoch> {
    any::<u64>().prop_map(lockmgr_replica::Epoch)
}

pub fn input() -> impl Strategy<Value = lockmgr_replica::Input> {
    use lockmgr_replica::Input;
    prop_oneof![
        (session_id(), node_name())
            .prop_map(|(session, node)| Input::OpenSession { session, node }),
        session_id().prop_map(|session| Input::EndSession { session }),
        (session_id(), request_id(), request()).prop_map(|(session, request, req)| {
            Input::Request {
                session,
                request,
                req,
            }
        }),
        Just(Input::Timeout),
        Just(Input::TakeOrphanedDeletes),
        (session_id(), any::<u64>())
            .prop_map(|(session, seq)| Input::OutputsReceived { session, seq }),
    ]
}

/// Up to a handful of consecutive log entries.
pub fn entries() -> impl Strategy<Value = Vec<lockmgr_replica::Entry>> {
    (
        0u64..u64::MAX / 2,
        proptest::collection::vec((any::<u64>(), input()), 0..6),
    )
        .prop_map(|(first, items)| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, (now, input))| lockmgr_replica::Entry {
                    index: first + i as u64,
                    now: Time(now),
                    input,
                })
                .collect()
        })
}

pub fn append_refusal() -> impl Strategy<Value = lockmgr_replica::AppendError> {
    use lockmgr_replica::AppendError;
    prop_oneof![
        (epoch(), epoch()).prop_map(|(sent, mine)| AppendError::EpochMismatch { sent, mine }),
        (any::<u64>(), any::<u64>()).prop_map(|(expected, got)| AppendError::Gap { expected, got }),
        Just(AppendError::NotStandby),
    ]
}
