//! Representative messages covering every message type and every engine variant, for tests,
//! fuzz-corpus generation and benchmarks (here and in dependent crates).

use lockmgr_engine::{
    ClientGuid, DurableRequest, FileId, FileUsage, Lease, LeaseKey, LeaseState, LockRange,
    Notification, OpenId, OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply, Request,
    RequestId, SessionId, Status,
};

use crate::message::{Message, RejectReason};

/// A typical hot-path message: a one-range, fail-immediately exclusive lock.
pub fn lock_request() -> Message {
    Message::Request {
        request_id: RequestId(42),
        body: Request::Lock {
            open: OpenId(7),
            ranges: vec![LockRange {
                offset: 4096,
                length: 512,
                exclusive: true,
            }],
            fail_immediately: true,
        },
    }
}

fn lease_v2() -> Lease {
    Lease {
        key: LeaseKey(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        state: LeaseState::RWH,
        parent_key: Some(LeaseKey(0x1111_2222_3333_4444_5555_6666_7777_8888)),
        epoch: Some(3),
        breaking: true,
    }
}

fn lease_v1() -> Lease {
    Lease {
        key: LeaseKey(0xdead_beef),
        state: LeaseState::RH,
        parent_key: None,
        epoch: None,
        breaking: false,
    }
}

/// Every request variant, with every optional field both present and absent somewhere.
pub fn requests() -> Vec<Request> {
    let open = |oplock| OpenRequest {
        stream_base: None,
        link: 0,
        file: FileId(0xfeed_f00d_0000_0000_0000_0000_0000_0001),
        // FILE_READ_DATA | DELETE, FILE_SHARE_READ (MS-SMB2 2.2.13).
        access: 0x0001_0001,
        share: 0x1,
        delete_on_close: true,
        directory: false,
        overwrite: true,
        client_guid: ClientGuid(0xabcdef),
        oplock,
        io_grant: false,
    };
    vec![
        Request::Open(open(OplockRequest::None)),
        Request::Open(open(OplockRequest::Oplock(OplockLevel::Batch))),
        Request::Open(open(OplockRequest::Lease(lease_v1()))),
        Request::Open(open(OplockRequest::Lease(lease_v2()))),
        Request::Open(OpenRequest {
            stream_base: Some(FileId(0xfeed_f00d_0000_0000_0000_0000_0000_0002)),
            ..open(OplockRequest::None)
        }),
        Request::OpenDurable {
            open: open(OplockRequest::Lease(lease_v2())),
            durable: DurableRequest {
                key: 0x0000_0001_0000_0004,
                timeout_ms: 60_000,
                persistent: false,
                blob: b"data\0dir/file.txt".to_vec(),
            },
        },
        Request::OpenDurable {
            open: open(OplockRequest::None),
            durable: DurableRequest {
                key: 0x0000_0001_0000_0005,
                timeout_ms: 120_000,
                persistent: true,
                blob: Vec::new(),
            },
        },
        Request::Open(OpenRequest {
            link: 0x1122_3344_5566_7788,
            ..open(OplockRequest::None)
        }),
        Request::Open(OpenRequest {
            io_grant: true,
            ..open(OplockRequest::Lease(lease_v1()))
        }),
        Request::Close { open: OpenId(9) },
        Request::SetDeletePending {
            open: OpenId(9),
            delete: true,
        },
        Request::Lock {
            open: OpenId(3),
            ranges: vec![
                LockRange {
                    offset: 0,
                    length: 0,
                    exclusive: false,
                },
                LockRange {
                    offset: u64::MAX - 1,
                    length: 1,
                    exclusive: true,
                },
            ],
            fail_immediately: false,
        },
        Request::Unlock {
            open: OpenId(3),
            ranges: vec![LockRange {
                offset: 10,
                length: 20,
                exclusive: false,
            }],
        },
        Request::Cancel {
            request: RequestId(77),
        },
        Request::CheckIo {
            open: OpenId(4),
            offset: 1 << 40,
            length: 65536,
            write: true,
        },
        Request::OplockBreakAck {
            open: OpenId(5),
            level: OplockLevel::LevelII,
        },
        Request::LeaseBreakAck {
            client_guid: ClientGuid(1),
            key: LeaseKey(2),
            state: LeaseState::READ,
        },
        Request::BreakForRename { open: OpenId(4) },
        Request::BreakAndClose { open: OpenId(5) },
        Request::QueryUsage {
            file: FileId(0xfeed),
            except: Some(OpenId(4)),
        },
        Request::QueryUsage {
            file: FileId(0xfeed),
            except: None,
        },
        Request::Relink {
            open: OpenId(4),
            link: 0x99,
        },
        Request::SetDurable {
            open: OpenId(3),
            key: 0x0000_0001_0000_0002,
            timeout_ms: 60_000,
            persistent: false,
            blob: b"data\0dir/file.txt".to_vec(),
        },
        Request::SetDurable {
            open: OpenId(5),
            key: 0x0000_0001_0000_0003,
            timeout_ms: 120_000,
            persistent: true,
            blob: b"ca\0dir/file.txt".to_vec(),
        },
        Request::Disconnect { open: OpenId(3) },
        Request::DurableLookup {
            key: 0x0000_0001_0000_0002,
        },
        Request::Reclaim {
            key: 0x0000_0001_0000_0002,
            open: OpenId(3),
            client_guid: ClientGuid(0x1234),
        },
        Request::CheckIoGrant {
            open: OpenId(4),
            offset: 0,
            length: 4096,
            write: false,
        },
        Request::IoRecallAck {
            file: FileId(0xfeed),
        },
        Request::WatchDir {
            dir: FileId(0xd1),
            tree: true,
            path: "share\\docs\\q3".into(),
        },
        Request::UnwatchDir { dir: FileId(0xd1) },
        Request::DirChange(dir_change()),
    ]
}

fn dir_change() -> lockmgr_engine::DirChange {
    lockmgr_engine::DirChange {
        dir: FileId(0xd1),
        action: 3,
        filter: 0x8,
        name: "sub\\r\u{e9}sum\u{e9}.txt".to_owned(),
        subtree: true,
    }
}

/// Every reply variant.
pub fn replies() -> Vec<Reply> {
    vec![
        Reply::Opened {
            open: OpenId(11),
            grant: OplockGrant::Lease(lease_v2()),
        },
        Reply::Opened {
            open: OpenId(12),
            grant: OplockGrant::Oplock(OplockLevel::Exclusive),
        },
        Reply::OpenedDurable {
            open: OpenId(13),
            grant: OplockGrant::Oplock(OplockLevel::Batch),
        },
        Reply::Pending,
        Reply::Done(Status::Success),
        Reply::Done(Status::Unsuccessful),
        Reply::Closed { delete_file: true },
        Reply::ClosedDeleteBase,
        Reply::Acked {
            grant: OplockGrant::None,
        },
        Reply::Durable {
            open: OpenId(3),
            blob: vec![1, 2, 3],
        },
        Reply::Usage(FileUsage {
            opens: 3,
            deny_delete: 1,
            delete_access: 2,
            deleted_links: 1,
            except_deleted: true,
        }),
        Reply::IoGranted { generation: 42 },
        Reply::OpenedIo {
            open: OpenId(14),
            grant: OplockGrant::Lease(lease_v1()),
            durable: false,
            generation: 43,
        },
        Reply::OpenedIo {
            open: OpenId(15),
            grant: OplockGrant::None,
            durable: true,
            generation: 44,
        },
    ]
}

/// Every notification variant.
pub fn notifications() -> Vec<Notification> {
    vec![
        Notification::OplockBreak {
            open: OpenId(13),
            new_level: OplockLevel::None,
        },
        Notification::LeaseBreak {
            client_guid: ClientGuid(14),
            key: LeaseKey(15),
            current: LeaseState::RWH,
            new: LeaseState::RH,
            epoch: Some(9),
            ack_required: true,
        },
        Notification::LeaseBreak {
            client_guid: ClientGuid(14),
            key: LeaseKey(15),
            current: LeaseState::READ,
            new: LeaseState::NONE,
            epoch: None,
            ack_required: false,
        },
        Notification::Completed {
            request: RequestId(16),
            reply: Reply::Done(Status::LockNotGranted),
        },
        Notification::IoRecall {
            file: FileId(0xfeed),
            generation: 43,
        },
        Notification::DirWatched {
            dir: FileId(0xd1),
            state: lockmgr_engine::watched::DIR | lockmgr_engine::watched::TREE,
            path: "share\\docs\\q3".into(),
        },
        Notification::DirChanged(dir_change()),
    ]
}

/// Every message type, each engine variant wrapped once. All fit together in one frame.
pub fn all_messages() -> Vec<Message> {
    let mut v = vec![
        Message::ClientHello {
            node_name: "smbd-node-01.example".to_owned(),
            client_nonce: [0xa5; 32],
            min_version: 1,
            max_version: 1,
        },
        Message::ServerChallenge {
            session_id: SessionId(0x5e55_1000),
            version: 1,
            server_nonce: [0x5a; 32],
        },
        Message::ClientProof { proof: [1; 32] },
        Message::SessionAccepted {
            session_id: SessionId(0x5e55_1000),
            liveness_lease_ms: 3000,
            server_proof: [2; 32],
        },
        Message::SessionRejected {
            reason: RejectReason::BadProof,
        },
        Message::Heartbeat { seq: 1 },
        Message::HeartbeatAck { seq: 1 },
        Message::Goodbye,
        Message::StatusQuery,
        Message::StatusText {
            more: true,
            text: "sessions: 3\nopens: 12 — ok\n".to_owned(),
        },
        Message::StatusText {
            more: false,
            text: String::new(),
        },
        Message::MemberQuery {
            node: "node1".to_owned(),
        },
        Message::MemberState {
            node: "node1".to_owned(),
            has_session: true,
        },
        Message::MemberState {
            node: "node2".to_owned(),
            has_session: false,
        },
    ];
    v.extend(replication_messages());
    v.extend(
        requests()
            .into_iter()
            .enumerate()
            .map(|(i, body)| Message::Request {
                request_id: RequestId(100 + i as u64),
                body,
            }),
    );
    v.extend(
        replies()
            .into_iter()
            .enumerate()
            .map(|(i, body)| Message::Reply {
                request_id: RequestId(200 + i as u64),
                body,
            }),
    );
    v.extend(
        notifications()
            .into_iter()
            .map(|body| Message::Notify { body }),
    );
    v
}

/// Session resumption and replication messages: one log entry of every input kind, each
/// refusal, a snapshot chunk.
pub fn replication_messages() -> Vec<Message> {
    use lockmgr_replica::{AppendError, Entry, Epoch, Input};
    let session = SessionId(0x5e55_1000);
    let inputs = vec![
        Input::OpenSession {
            session,
            node: "smbd-node-01".to_owned(),
        },
        Input::Request {
            session,
            request: RequestId(9),
            req: requests().swap_remove(0),
        },
        Input::Timeout,
        Input::TakeOrphanedDeletes,
        Input::OutputsReceived { session, seq: 77 },
        Input::EndSession { session },
    ];
    let entries = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| Entry {
            index: 1000 + i as u64,
            now: lockmgr_engine::Time(5_000_000 + i as u64),
            input,
        })
        .collect();
    vec![
        Message::OutputsReceived { seq: 77 },
        Message::ResumeSession {
            session_id: session,
            received: 76,
        },
        Message::ReplicaAttach {
            epoch: Epoch(3),
            incarnation: 0x1234_5678_9abc_def0,
            address: "udp:10.0.0.2:7100".into(),
        },
        Message::Append {
            epoch: Epoch(3),
            entries,
        },
        Message::AppendAck {
            epoch: Epoch(3),
            next_index: 1006,
        },
        Message::AppendRefused {
            refusal: AppendError::EpochMismatch {
                sent: Epoch(3),
                mine: Epoch(4),
            },
        },
        Message::AppendRefused {
            refusal: AppendError::Gap {
                expected: 1000,
                got: 1002,
            },
        },
        Message::AppendRefused {
            refusal: AppendError::NotStandby,
        },
        Message::Snapshot {
            epoch: Epoch(4),
            total: 100,
            offset: 96,
            chunk: vec![1, 2, 3, 4],
        },
        Message::Recorded {
            config: lockmgr_replica::Configuration {
                epoch: 7,
                primary: lockmgr_replica::Member::new("lm-a", "udp:10.0.0.1:7100", 11),
                standbys: vec![lockmgr_replica::Member::new(
                    "lm-b",
                    "udp:10.0.0.2:7100",
                    12,
                )],
            },
        },
    ]
}
