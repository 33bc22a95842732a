#![allow(dead_code)]

use lockmgr_engine::*;

pub const S1: SessionId = SessionId(1);
pub const S2: SessionId = SessionId(2);
pub const S3: SessionId = SessionId(3);
pub const F1: FileId = FileId(0x1111);
pub const F2: FileId = FileId(0x2222);
pub const G1: ClientGuid = ClientGuid(0xa1);
pub const G2: ClientGuid = ClientGuid(0xa2);

pub const RW: u32 = access::FILE_READ_DATA | access::FILE_WRITE_DATA;
pub const SHARE_ALL: u32 = share::READ | share::WRITE | share::DELETE;

/// Test harness: runs requests, returns their immediate reply, and keeps every other output
/// (notifications, replies to other requests) in `events`.
pub struct H {
    pub e: Engine,
    pub now: Time,
    next: u64,
    pub events: Vec<Output>,
}

impl H {
    pub fn new() -> H {
        Self::with(Config::default())
    }

    pub fn with(config: Config) -> H {
        let mut e = Engine::new(config);
        for s in [S1, S2, S3] {
            e.open_session(s);
        }
        H {
            e,
            now: Time::from_secs(1),
            next: 1,
            events: Vec::new(),
        }
    }

    pub fn next_id(&mut self) -> RequestId {
        self.next += 1;
        RequestId(self.next)
    }

    /// Handle `req` and return its reply plus its request id.
    pub fn call(&mut self, s: SessionId, req: Request) -> (RequestId, Reply) {
        let id = self.next_id();
        self.e.handle(self.now, s, id, req);
        let mut reply = None;
        while let Some(o) = self.e.poll_output() {
            match o {
                Output::Reply {
                    session,
                    request,
                    reply: r,
                } if session == s && request == id => {
                    assert!(reply.is_none(), "two replies for one request");
                    reply = Some(r);
                }
                other => self.events.push(other),
            }
        }
        (id, reply.expect("every request gets a reply"))
    }

    pub fn req(&mut self, s: SessionId, req: Request) -> Reply {
        self.call(s, req).1
    }

    pub fn open(&mut self, s: SessionId, o: OpenRequest) -> Reply {
        self.req(s, Request::Open(o))
    }

    pub fn open_ok(&mut self, s: SessionId, o: OpenRequest) -> (OpenId, OplockGrant) {
        match self.open(s, o) {
            Reply::Opened { open, grant } => (open, grant),
            other => panic!("open failed: {other:?}"),
        }
    }

    pub fn close(&mut self, s: SessionId, open: OpenId) -> Reply {
        self.req(s, Request::Close { open })
    }

    pub fn lock(
        &mut self,
        s: SessionId,
        open: OpenId,
        offset: u64,
        length: u64,
        exclusive: bool,
        fail: bool,
    ) -> Reply {
        self.req(
            s,
            Request::Lock {
                open,
                ranges: vec![LockRange {
                    offset,
                    length,
                    exclusive,
                }],
                fail_immediately: fail,
            },
        )
    }

    pub fn unlock(&mut self, s: SessionId, open: OpenId, offset: u64, length: u64) -> Reply {
        self.req(
            s,
            Request::Unlock {
                open,
                ranges: vec![LockRange {
                    offset,
                    length,
                    exclusive: false,
                }],
            },
        )
    }

    pub fn io(
        &mut self,
        s: SessionId,
        open: OpenId,
        offset: u64,
        length: u64,
        write: bool,
    ) -> Status {
        match self.req(
            s,
            Request::CheckIo {
                open,
                offset,
                length,
                write,
            },
        ) {
            Reply::Done(st) => st,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
        while let Some(t) = self.e.poll_timeout() {
            if t > self.now {
                break;
            }
            self.e.handle_timeout(self.now);
        }
        while let Some(o) = self.e.poll_output() {
            self.events.push(o);
        }
    }

    pub fn take_events(&mut self) -> Vec<Output> {
        while let Some(o) = self.e.poll_output() {
            self.events.push(o);
        }
        std::mem::take(&mut self.events)
    }

    /// The Completed notification for `request`, removed from `events`.
    pub fn completed(&mut self, s: SessionId, request: RequestId) -> Option<Reply> {
        let pos = self.events.iter().position(|o| {
            matches!(o, Output::Notify { session, notification: Notification::Completed { request: r, .. } }
                if *session == s && *r == request)
        })?;
        match self.events.remove(pos) {
            Output::Notify {
                notification: Notification::Completed { reply, .. },
                ..
            } => Some(reply),
            _ => None,
        }
    }

    /// Notifications other than Completed addressed to `s`, removed from `events`.
    pub fn breaks_for(&mut self, s: SessionId) -> Vec<Notification> {
        let mut out = Vec::new();
        self.events.retain(|o| match o {
            Output::Notify {
                session,
                notification,
            } if *session == s => {
                if matches!(notification, Notification::Completed { .. }) {
                    true
                } else {
                    out.push(notification.clone());
                    false
                }
            }
            _ => true,
        });
        out
    }
}

pub fn file_open(file: FileId, access: u32, share: u32) -> OpenRequest {
    OpenRequest {
        file,
        access,
        share,
        ..Default::default()
    }
}

pub fn with_oplock(mut o: OpenRequest, level: OplockLevel) -> OpenRequest {
    o.oplock = OplockRequest::Oplock(level);
    o
}

pub fn with_lease(
    mut o: OpenRequest,
    guid: ClientGuid,
    key: u128,
    state: LeaseState,
    epoch: Option<u16>,
) -> OpenRequest {
    o.client_guid = guid;
    o.oplock = OplockRequest::Lease(Lease {
        key: LeaseKey(key),
        state,
        parent_key: None,
        epoch,
        breaking: false,
    });
    o
}

pub fn lease_state(g: &OplockGrant) -> LeaseState {
    match g {
        OplockGrant::Lease(l) => l.state,
        other => panic!("not a lease: {other:?}"),
    }
}
