//! Differential test: random operation sequences driven into the engine (through its public
//! Request/Reply/Notification API) and into `refmodel`, a reference model written from
//! MS-FSA / MS-SMB2 independently of the engine's code. Every reply, every break sent (to whom,
//! from which state to which) and every completion must agree.
//!
//! The driver answers every break that needs an ack before the next operation (acking to the
//! level asked, or closing the holder instead), so deferred creates and renames complete within
//! the operation that caused them.
//!
//! A failure prints the shrunk operation sequence and the step-by-step trace up to the first
//! disagreement. `PROPTEST_CASES` raises the case count (CI keeps the default small and the
//! seed fixed); `REFMODEL_EXPLORE=1` draws a random seed.
//!
//! Against the engine before issue 12's fixes (this file and `refmodel/` copied into a checkout
//! of the old revision; the driver adapted by dropping `stream_base` and
//! `SetDurable::persistent`, which came later, and treating the named stream as a plain file)
//! the random test reported findings 1, 2, 5, 6 and 7; the `finding_*` tests below are the
//! shrunk cases. Where one finding hid another, the generator was narrowed for the run (durable
//! operations skipped; oplocks only; leases only on a file's first open).
//!
//! | revision        | fails                   |
//! |-----------------|-------------------------|
//! | 559c48c^        | findings 1, 2, 5, 6, 7  |
//! | 29fef94^        | findings 1, 2, 5, 6     |
//! | 097000b^        | finding 6               |
//! | today           | none (4 ignored: new)   |
#![forbid(unsafe_code)]

mod refmodel;

use std::collections::BTreeMap;

use lockmgr_engine::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use refmodel::{Grant, Handle, Model, Note, OpenParams, Outstanding, Rep, Rules};

// ----- the operation vocabulary ---------------------------------------------------------------

/// Streams used: a file, a named stream of it, a second file and a directory.
const FILE_A: u128 = 0xa0;
const FILE_A_STREAM: u128 = 0xa1;
const FILE_B: u128 = 0xb0;
const DIR: u128 = 0xd0;
const FILES: [u128; 4] = [FILE_A, FILE_A_STREAM, FILE_B, DIR];

const STAT: u32 = access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE;
const ACCESSES: [u32; 6] = [
    access::FILE_READ_DATA,
    access::FILE_WRITE_DATA,
    access::FILE_READ_DATA | access::FILE_WRITE_DATA,
    access::DELETE,
    access::FILE_READ_DATA | access::DELETE,
    STAT,
];
const SHARES: [u32; 5] = [
    0,
    share::READ,
    share::READ | share::WRITE,
    share::READ | share::WRITE | share::DELETE,
    share::READ | share::DELETE,
];
/// Requested caching: none, Level II, Exclusive, Batch, then leases R, RH, RW, RWH.
const CACHING: [Option<OplockLevel>; 4] = [
    None,
    Some(OplockLevel::LevelII),
    Some(OplockLevel::Exclusive),
    Some(OplockLevel::Batch),
];
const LEASES: [u8; 4] = [0x1, 0x3, 0x5, 0x7];
const OFFSETS: [u64; 5] = [0, 1, 3, 8, u64::MAX - 1];
const LENGTHS: [u64; 5] = [0, 1, 2, 5, u64::MAX];

/// Clients (ClientGuids); client `c` speaks through session `1 + c % 2` (two smbd nodes).
const CLIENTS: u8 = 3;

/// The byte range an operation's offset and length indices name.
fn range(off: u8, len: u8) -> (u64, u64) {
    (
        OFFSETS[off as usize % OFFSETS.len()],
        LENGTHS[len as usize % LENGTHS.len()],
    )
}

fn guid(c: u8) -> u128 {
    0x100 + c as u128
}

fn session_of(c: u8) -> u64 {
    1 + (c % 2) as u64
}

#[derive(Clone, Debug)]
pub enum Op {
    Open {
        client: u8,
        file: u8,
        access: u8,
        share: u8,
        caching: u8,
        lease_key: u8,
        overwrite: bool,
        doc: bool,
        resp: u8,
    },
    Close {
        open: u8,
        resp: u8,
    },
    SetDelete {
        open: u8,
        delete: bool,
        resp: u8,
    },
    Rename {
        open: u8,
        resp: u8,
    },
    Lock {
        open: u8,
        off: u8,
        len: u8,
        excl: bool,
        fail: bool,
    },
    Lock2 {
        open: u8,
        a: (u8, u8, bool),
        b: (u8, u8, bool),
    },
    Unlock {
        open: u8,
        off: u8,
        len: u8,
    },
    /// READ or WRITE; with `grant` the way an smbd node using I/O grants does it:
    /// `CheckIoGrant`, and no request at all while the open holds a grant.
    Io {
        open: u8,
        off: u8,
        len: u8,
        write: bool,
        grant: bool,
    },
    Cancel {
        session: u8,
        waiter: u8,
    },
    Durable {
        open: u8,
    },
    Disconnect {
        open: u8,
        resp: u8,
    },
    Reclaim {
        which: u8,
        client: u8,
    },
    /// SetDurable, then Disconnect: the usual way a durable open goes away.
    Vanish {
        open: u8,
        resp: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let idx = 0..8u8;
    let off = 0..OFFSETS.len() as u8;
    let len = 0..LENGTHS.len() as u8;
    prop_oneof![
        8 => (0..CLIENTS, 0..FILES.len() as u8, 0..ACCESSES.len() as u8, 0..SHARES.len() as u8,
              0..8u8, 0..2u8, prop::bool::weighted(0.2), prop::bool::weighted(0.15), any::<u8>())
            .prop_map(|(client, file, access, share, caching, lease_key, overwrite, doc, resp)| Op::Open {
                client, file, access, share, caching, lease_key, overwrite, doc, resp }),
        3 => (idx.clone(), any::<u8>()).prop_map(|(open, resp)| Op::Close { open, resp }),
        2 => (idx.clone(), prop::bool::weighted(0.8), any::<u8>())
            .prop_map(|(open, delete, resp)| Op::SetDelete { open, delete, resp }),
        2 => (idx.clone(), any::<u8>()).prop_map(|(open, resp)| Op::Rename { open, resp }),
        5 => (idx.clone(), off.clone(), len.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(open, off, len, excl, fail)| Op::Lock { open, off, len, excl, fail }),
        1 => (idx.clone(), (off.clone(), len.clone(), any::<bool>()), (off.clone(), len.clone(), any::<bool>()))
            .prop_map(|(open, a, b)| Op::Lock2 { open, a, b }),
        3 => (idx.clone(), off.clone(), len.clone()).prop_map(|(open, off, len)| Op::Unlock { open, off, len }),
        4 => (idx.clone(), off, len, any::<bool>(), any::<bool>())
            .prop_map(|(open, off, len, write, grant)| Op::Io { open, off, len, write, grant }),
        2 => (0..2u8, 0..4u8).prop_map(|(session, waiter)| Op::Cancel { session, waiter }),
        2 => idx.clone().prop_map(|open| Op::Durable { open }),
        2 => (idx.clone(), any::<u8>()).prop_map(|(open, resp)| Op::Disconnect { open, resp }),
        3 => (0..4u8, 0..CLIENTS).prop_map(|(which, client)| Op::Reclaim { which, client }),
        3 => (idx, any::<u8>()).prop_map(|(open, resp)| Op::Vanish { open, resp }),
    ]
}

// ----- the driver --------------------------------------------------------------------------------

struct Driver {
    engine: Engine,
    model: Model,
    now: Time,
    next_request: u64,
    engine_to_handle: BTreeMap<OpenId, Handle>,
    handle_to_engine: BTreeMap<Handle, OpenId>,
    next_engine_handle: Handle,
    trace: Vec<String>,
    /// Opens holding an I/O grant, with their session and file: the driver plays an smbd
    /// node that skips `CheckIo` for them, and drops them when recalled.
    io_grants: BTreeMap<Handle, (u64, u128)>,
    /// The last reply mapped was `IoGranted`.
    last_io_granted: bool,
}

type Step = Result<Rep, String>;

impl Driver {
    fn new(rules: Rules) -> Driver {
        let mut engine = Engine::new(Config::default());
        engine.open_session(SessionId(1));
        engine.open_session(SessionId(2));
        Driver {
            engine,
            model: Model::new(rules),
            now: Time::from_secs(1),
            next_request: 0,
            engine_to_handle: BTreeMap::new(),
            handle_to_engine: BTreeMap::new(),
            next_engine_handle: 0,
            trace: Vec::new(),
            io_grants: BTreeMap::new(),
            last_io_granted: false,
        }
    }

    fn eid(&self, h: Handle) -> OpenId {
        self.handle_to_engine
            .get(&h)
            .copied()
            .unwrap_or(OpenId(u64::MAX))
    }

    fn handle_of(&mut self, open: OpenId) -> Handle {
        if let Some(h) = self.engine_to_handle.get(&open) {
            return *h;
        }
        let h = self.next_engine_handle;
        self.next_engine_handle += 1;
        self.engine_to_handle.insert(open, h);
        self.handle_to_engine.insert(h, open);
        h
    }

    fn grant(g: OplockGrant) -> Grant {
        match g {
            OplockGrant::None => Grant::None,
            OplockGrant::Oplock(level) => Grant::of_oplock(level),
            OplockGrant::Lease(l) => Grant::Lease(l.state.0),
        }
    }

    fn reply(&mut self, r: Reply) -> Rep {
        match r {
            Reply::Opened { open, grant } => Rep::Opened {
                h: self.handle_of(open),
                grant: Self::grant(grant),
            },
            Reply::Pending => Rep::Pending,
            Reply::Done(st) => Rep::Done(st),
            Reply::Closed { delete_file } => Rep::Closed { delete_file },
            Reply::ClosedDeleteBase => Rep::ClosedDeleteBase,
            Reply::Acked { grant } => Rep::Acked(Self::grant(grant)),
            Reply::Durable { open, .. } => Rep::Durable {
                h: self.handle_of(open),
            },
            Reply::Usage(u) => Rep::Usage {
                opens: u.opens,
                deny_delete: u.deny_delete,
                delete_access: u.delete_access,
            },
            // The model knows no grants: a grant is a Success.
            Reply::IoGranted { .. } => {
                self.last_io_granted = true;
                Rep::Done(Status::Success)
            }
            other => panic!("reply the driver does not know: {other:?}"),
        }
    }

    /// An engine notification in the model's terms; `None` for an I/O recall, which the
    /// driver answers itself (recorded in `recalls`).
    fn note(
        &mut self,
        s: SessionId,
        notification: Notification,
        recalls: &mut Vec<(u64, FileId)>,
    ) -> Option<Note> {
        Some(match notification {
            Notification::OplockBreak { open, new_level } => Note::OplockBreak {
                session: s.0,
                h: self.handle_of(open),
                to: new_level,
            },
            Notification::LeaseBreak {
                client_guid,
                key,
                current,
                new,
                ack_required,
                ..
            } => Note::LeaseBreak {
                session: s.0,
                lease: (client_guid.0, key.0),
                current: current.0,
                new: new.0,
                ack_required,
            },
            Notification::Completed { request, reply } => Note::Completed {
                session: s.0,
                request: request.0,
                reply: self.reply(reply),
            },
            Notification::IoRecall { file, .. } => {
                recalls.push((s.0, file));
                return None;
            }
            other => panic!("notification the driver does not know: {other:?}"),
        })
    }

    /// Answer I/O recalls the way a node does: stop using the grants, then acknowledge. What
    /// the recall held back (a lock, a create) happens now; its notifications join `notes`.
    fn ack_recalls(
        &mut self,
        mut recalls: Vec<(u64, FileId)>,
        notes: &mut Vec<Note>,
    ) -> Result<(), String> {
        while let Some((session, file)) = recalls.pop() {
            self.io_grants
                .retain(|_, (s, f)| !(*s == session && *f == file.0));
            self.next_request += 1;
            let id = RequestId(self.next_request);
            self.engine.handle(
                self.now,
                SessionId(session),
                id,
                Request::IoRecallAck { file },
            );
            while let Some(o) = self.engine.poll_output() {
                match o {
                    Output::Reply {
                        session: s,
                        request,
                        reply,
                    } if s == SessionId(session) && request == id => {
                        if reply != Reply::Done(Status::Success) {
                            return Err(format!("recall ack answered {reply:?}"));
                        }
                    }
                    Output::Reply { .. } => return Err(format!("stray reply {o:?}")),
                    Output::Notify {
                        session: s,
                        notification,
                    } => {
                        if let Some(n) = self.note(s, notification, &mut recalls) {
                            notes.push(n);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One request into both: the replies and the notifications must agree.
    fn step(
        &mut self,
        session: u64,
        req: Request,
        model: impl FnOnce(&mut Model, u64) -> Rep,
    ) -> Step {
        self.next_request += 1;
        let id = self.next_request;
        let described = format!("s{session} #{id} {req:?}");
        self.engine
            .handle(self.now, SessionId(session), RequestId(id), req);
        let mut engine_reply = None;
        let mut engine_notes = Vec::new();
        let mut recalls = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Reply {
                    session: s,
                    request,
                    reply,
                } if s == SessionId(session) && request == RequestId(id) => {
                    if engine_reply.is_some() {
                        return Err(format!("{described}: two replies"));
                    }
                    engine_reply = Some(self.reply(reply));
                }
                Output::Reply { .. } => return Err(format!("{described}: stray reply {o:?}")),
                Output::Notify {
                    session: s,
                    notification,
                } => {
                    if let Some(n) = self.note(s, notification, &mut recalls) {
                        engine_notes.push(n);
                    }
                }
            }
        }
        self.ack_recalls(recalls, &mut engine_notes)
            .map_err(|e| format!("{described}: {e}"))?;
        // A request that waited only for the recall the driver just answered completes
        // within the step: the model, which knows no grants, answers it at once.
        if engine_reply == Some(Rep::Pending) {
            let done = engine_notes.iter().position(|n| {
                matches!(n, Note::Completed { session: s, request, .. } if *s == session && *request == id)
            });
            if let Some(i) = done {
                if let Note::Completed { reply, .. } = engine_notes.remove(i) {
                    engine_reply = Some(reply);
                }
            }
        }
        let Some(engine_reply) = engine_reply else {
            return Err(format!("{described}: no reply"));
        };
        let model_reply = model(&mut self.model, id);
        let mut model_notes = self.model.take_notes();
        let key = |n: &Note| format!("{n:?}");
        model_notes.sort_by_key(key);
        engine_notes.sort_by_key(key);
        self.trace.push(format!(
            "{described}\n      -> {engine_reply:?} {engine_notes:?}"
        ));
        if engine_reply != model_reply || engine_notes != model_notes {
            return Err(format!(
                "disagreement at {described}\n  engine: {engine_reply:?} {engine_notes:?}\n  model:  {model_reply:?} {model_notes:?}"
            ));
        }
        Ok(model_reply)
    }

    /// Answer every break still waiting for an ack: bit i of `resp` picks, for the i-th answer,
    /// closing the holder (1) instead of acknowledging (0).
    fn respond(&mut self, mut resp: u8) -> Result<(), String> {
        for _ in 0..64 {
            // A break only disconnected opens could answer is left to the break timeout.
            let answerable = self.model.outstanding().into_iter().find(|b| match *b {
                Outstanding::Oplock { h, .. } => {
                    self.model.open(h).is_some_and(|o| !o.disconnected)
                }
                Outstanding::Lease { lease, .. } => self
                    .model
                    .opens
                    .iter()
                    .any(|o| o.lease == Some(lease) && !o.disconnected),
            });
            let Some(first) = answerable else {
                return Ok(());
            };
            let close = resp & 1 == 1;
            resp = resp.rotate_right(1);
            match first {
                Outstanding::Oplock { h, to } => {
                    let Some(o) = self.model.open(h) else {
                        return Err(format!("outstanding break of unknown {h}"));
                    };
                    let session = o.session;
                    if close && !self.model.has_waiter(h) {
                        self.step(session, Request::Close { open: self.eid(h) }, |m, _| {
                            m.close(h)
                        })?;
                    } else {
                        self.step(
                            session,
                            Request::OplockBreakAck {
                                open: self.eid(h),
                                level: to,
                            },
                            |m, _| m.oplock_ack(h, to),
                        )?;
                    }
                }
                Outstanding::Lease { lease, to } => {
                    let holders: Vec<(Handle, u64)> = self
                        .model
                        .opens
                        .iter()
                        .filter(|o| o.lease == Some(lease) && !o.disconnected)
                        .map(|o| (o.h, o.session))
                        .collect();
                    let Some(&(h, session)) = holders.first() else {
                        return Err(format!("outstanding lease break without holder {lease:?}"));
                    };
                    if close && holders.len() == 1 && !self.model.has_waiter(h) {
                        self.step(session, Request::Close { open: self.eid(h) }, |m, _| {
                            m.close(h)
                        })?;
                    } else {
                        self.step(
                            session,
                            Request::LeaseBreakAck {
                                client_guid: ClientGuid(lease.0),
                                key: LeaseKey(lease.1),
                                state: LeaseState(to),
                            },
                            |m, _| m.lease_ack(lease, to),
                        )?;
                    }
                }
            }
        }
        Err("breaks never settle".into())
    }

    /// The connected open `i` picks (modulo the number of connected opens).
    fn pick(&self, i: u8) -> Option<(Handle, u64)> {
        let live: Vec<(Handle, u64)> = self
            .model
            .opens
            .iter()
            .filter(|o| !o.disconnected)
            .map(|o| (o.h, o.session))
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[i as usize % live.len()])
    }

    /// The handle-caching break before a rename or delete through `h`, answered.
    fn break_for_rename(&mut self, h: Handle, session: u64, resp: u8) -> Result<(), String> {
        let open = self.eid(h);
        self.step(session, Request::BreakForRename { open }, |m, id| {
            m.break_for_rename(session, id, h)
        })?;
        self.respond(resp)
    }

    fn run(&mut self, op: &Op) -> Result<(), String> {
        self.trace.push(format!("{op:?}"));
        match *op {
            Op::Open {
                client,
                file,
                access: a,
                share: s,
                caching,
                lease_key,
                overwrite,
                doc,
                resp,
            } => {
                let file_id = FILES[file as usize % FILES.len()];
                let directory = file_id == DIR;
                let access_mask = ACCESSES[a as usize % ACCESSES.len()];
                let stat = refmodel::is_stat_open(access_mask);
                let caching = if stat { 0 } else { caching % 8 };
                let p = OpenParams {
                    file: file_id,
                    base: (file_id == FILE_A_STREAM).then_some(FILE_A),
                    access: access_mask,
                    share: SHARES[s as usize % SHARES.len()],
                    doc: doc && access_mask & access::DELETE != 0,
                    directory,
                    overwrite: overwrite && !directory && !stat,
                    guid: guid(client),
                    oplock: CACHING
                        .get(caching as usize)
                        .copied()
                        .flatten()
                        .unwrap_or(OplockLevel::None),
                    lease: (caching >= 4).then(|| {
                        (
                            file_id * 16 + lease_key as u128,
                            LEASES[caching as usize - 4],
                        )
                    }),
                };
                let oplock = match p.lease {
                    Some((key, state)) => OplockRequest::Lease(Lease {
                        key: LeaseKey(key),
                        state: LeaseState(state),
                        ..Lease::default()
                    }),
                    None if p.oplock == OplockLevel::None => OplockRequest::None,
                    None => OplockRequest::Oplock(p.oplock),
                };
                let req = OpenRequest {
                    file: FileId(p.file),
                    access: p.access,
                    share: p.share,
                    delete_on_close: p.doc,
                    directory,
                    overwrite: p.overwrite,
                    client_guid: ClientGuid(p.guid),
                    oplock,
                    stream_base: p.base.map(FileId),
                    // One name per file: the model has no hard links (0 = the file's one link).
                    link: 0,
                    io_grant: false,
                };
                let session = session_of(client);
                self.step(session, Request::Open(req), |m, id| {
                    m.request_open(session, id, p)
                })?;
                self.respond(resp)
            }
            Op::Close { open, resp } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                if self.model.has_waiter(h) {
                    return Ok(());
                }
                if self.model.open(h).is_some_and(|o| o.p.doc) {
                    self.break_for_rename(h, session, resp)?;
                }
                let open = self.eid(h);
                self.step(session, Request::Close { open }, |m, _| m.close(h))?;
                self.respond(resp)
            }
            Op::SetDelete { open, delete, resp } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                if self
                    .model
                    .open(h)
                    .is_some_and(|o| o.p.access & access::DELETE == 0)
                {
                    return Ok(());
                }
                if delete {
                    self.break_for_rename(h, session, resp)?;
                }
                let open = self.eid(h);
                self.step(
                    session,
                    Request::SetDeletePending { open, delete },
                    |m, _| m.set_delete_pending(h, delete),
                )?;
                Ok(())
            }
            Op::Rename { open, resp } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                self.break_for_rename(h, session, resp)?;
                let Some(file) = self.model.open(h).map(|o| o.p.file) else {
                    return Ok(());
                };
                let except = Some(self.eid(h));
                self.step(
                    session,
                    Request::QueryUsage {
                        file: FileId(file),
                        except,
                    },
                    |m, _| m.query_usage(file, Some(h)),
                )?;
                Ok(())
            }
            Op::Lock {
                open,
                off,
                len,
                excl,
                fail,
            } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                let (offset, length) = range(off, len);
                self.lock(h, session, &[(offset, length, excl)], fail)
            }
            Op::Lock2 { open, a, b } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                let r = |(o, l, e): (u8, u8, bool)| {
                    let (offset, length) = range(o, l);
                    (offset, length, e)
                };
                self.lock(h, session, &[r(a), r(b)], true)
            }
            Op::Unlock { open, off, len } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                let (offset, length) = range(off, len);
                let open = self.eid(h);
                self.step(
                    session,
                    Request::Unlock {
                        open,
                        ranges: vec![LockRange {
                            offset,
                            length,
                            exclusive: false,
                        }],
                    },
                    |m, _| m.unlock(h, offset, length),
                )?;
                self.respond(0)
            }
            Op::Io {
                open,
                off,
                len,
                write,
                grant,
            } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                let (offset, length) = range(off, len);
                // smbd never reads or writes a directory; a wrapping range fails before.
                let directory = self.model.open(h).is_some_and(|o| o.p.directory);
                if offset as u128 + length as u128 > 1 << 64 || directory {
                    return Ok(());
                }
                if grant && self.io_grants.contains_key(&h) {
                    // The grant's promise: the I/O would be a Success that changes nothing.
                    let rep = self.model.check_io(h, offset, length, write);
                    let notes = self.model.take_notes();
                    self.trace.push(format!(
                        "s{session} I/O through a grant of {h}: model {rep:?} {notes:?}"
                    ));
                    if rep != Rep::Done(Status::Success) || !notes.is_empty() {
                        return Err(format!(
                            "{h} used its I/O grant, but the model answers {rep:?} {notes:?}"
                        ));
                    }
                    return Ok(());
                }
                let open = self.eid(h);
                let req = if grant {
                    Request::CheckIoGrant {
                        open,
                        offset,
                        length,
                        write,
                    }
                } else {
                    Request::CheckIo {
                        open,
                        offset,
                        length,
                        write,
                    }
                };
                self.last_io_granted = false;
                self.step(session, req, |m, _| m.check_io(h, offset, length, write))?;
                if std::mem::take(&mut self.last_io_granted) {
                    let file = self.model.open(h).map_or(0, |o| o.p.file);
                    self.io_grants.insert(h, (session, file));
                }
                self.respond(0)
            }
            Op::Cancel { session, waiter } => {
                let session = 1 + session as u64 % 2;
                let waiters = self.model.waiters_of(session);
                let Some(&request) = waiters.get(waiter as usize % waiters.len().max(1)) else {
                    return Ok(());
                };
                self.step(
                    session,
                    Request::Cancel {
                        request: RequestId(request),
                    },
                    |m, _| m.cancel(session, request),
                )?;
                self.respond(0)
            }
            Op::Durable { open } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                let key = 1000 + h as u64;
                let open = self.eid(h);
                self.step(
                    session,
                    Request::SetDurable {
                        open,
                        key,
                        timeout_ms: 60_000,
                        persistent: false,
                        blob: vec![1],
                    },
                    |m, _| m.set_durable(h, key),
                )?;
                Ok(())
            }
            Op::Disconnect { open, resp } => {
                let Some((h, session)) = self.pick(open) else {
                    return Ok(());
                };
                if self.model.has_waiter(h) {
                    return Ok(());
                }
                let open = self.eid(h);
                // The node loses the open, and with it the grant.
                self.io_grants.remove(&h);
                self.step(session, Request::Disconnect { open }, |m, _| {
                    m.disconnect(h)
                })?;
                self.respond(resp)
            }
            Op::Vanish { open, resp } => {
                self.run(&Op::Durable { open })?;
                self.run(&Op::Disconnect { open, resp })
            }
            Op::Reclaim { which, client } => {
                let gone: Vec<(Handle, u64)> = self
                    .model
                    .opens
                    .iter()
                    .filter(|o| o.disconnected)
                    .filter_map(|o| o.durable.map(|k| (o.h, k)))
                    .collect();
                let Some(&(h, key)) = gone.get(which as usize % gone.len().max(1)) else {
                    return Ok(());
                };
                let session = session_of(client);
                self.step(session, Request::DurableLookup { key }, |m, _| {
                    m.durable_lookup(key)
                })?;
                let open = self.eid(h);
                let g = guid(client);
                self.step(
                    session,
                    Request::Reclaim {
                        key,
                        open,
                        client_guid: ClientGuid(g),
                    },
                    |m, _| m.reclaim(session, key, h, g),
                )?;
                Ok(())
            }
        }
    }

    /// What smbd does after each request: unlink the delete-pending files whose last open the
    /// engine purged. Engine and model must name the same files.
    fn collect_orphans(&mut self) -> Result<(), String> {
        let mut engine: Vec<u128> = self
            .engine
            .take_orphaned_deletes()
            .into_iter()
            .map(|f| f.0)
            .collect();
        let mut model = self.model.take_orphans();
        engine.sort_unstable();
        model.sort_unstable();
        if engine != model {
            return Err(format!(
                "orphaned deletes differ: engine {engine:x?}, model {model:x?}"
            ));
        }
        if !engine.is_empty() {
            self.trace.push(format!("orphaned deletes {engine:x?}"));
        }
        Ok(())
    }

    fn lock(
        &mut self,
        h: Handle,
        session: u64,
        ranges: &[(u64, u64, bool)],
        fail_immediately: bool,
    ) -> Result<(), String> {
        let open = self.eid(h);
        // As a node does: its own grants on the file end before it asks for a lock.
        if let Some(file) = self.model.open(h).map(|o| o.p.file) {
            self.io_grants
                .retain(|_, (s, f)| !(*s == session && *f == file));
        }
        let req = Request::Lock {
            open,
            ranges: ranges
                .iter()
                .map(|&(offset, length, exclusive)| LockRange {
                    offset,
                    length,
                    exclusive,
                })
                .collect(),
            fail_immediately,
        };
        self.step(session, req, |m, id| {
            m.lock(session, id, h, ranges, fail_immediately)
        })?;
        // A lock may break read caching; handle caching goes with it and wants an ack.
        self.respond(0)
    }
}

/// Run `ops`; on the first disagreement, the trace up to it.
fn run(ops: &[Op], rules: Rules) -> Result<(), String> {
    let mut d = Driver::new(rules);
    for op in ops {
        if let Err(e) = d.run(op).and_then(|()| d.collect_orphans()) {
            return Err(format!("{e}\ntrace:\n  {}", d.trace.join("\n  ")));
        }
    }
    Ok(())
}

/// The engine's documented choices that differ from the model's Windows-derived defaults.
/// Each entry says why; an empty list means the engine is held to the model everywhere.
fn engine_rules() -> Rules {
    Rules {
        // Allowed: an overwrite that fails with a sharing violation still breaks the other
        // opens' caching to None (without waiting). Samba does the same; Windows' order
        // (MS-FSA 2.1.5.1.2: sharing check before 2.1.4.12) would break nobody. Pinned by
        // `failed_overwrite_breaks_nobody` (ignored).
        failed_overwrite_breaks_caching: true,
        // Disagreement (new, reported): an existing lease asked for more than can be granted
        // keeps its old state instead of taking the grantable part (R asking RWH next to a
        // plain open stays R, where the W-less retry of MS-SMB2 3.3.5.9.8 gives RH). Pinned by
        // `partial_lease_upgrade_grants_what_it_can` (ignored).
        lease_upgrade_all_or_nothing: true,
        // Disagreement (new, reported): a create refused with DELETE_PENDING has already
        // closed the disconnected durable opens it conflicts with, so their client can no
        // longer reclaim them. Pinned by `delete_pending_create_leaves_durable_open` (ignored).
        purge_before_delete_pending_check: true,
        ..Rules::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        // CI runs the same sequences every time (no flaky failures from a rare case);
        // PROPTEST_RNG_SEED=<n> or REFMODEL_EXPLORE=1 (random seed) explore further.
        rng_seed: match (std::env::var("PROPTEST_RNG_SEED"), std::env::var("REFMODEL_EXPLORE")) {
            (Ok(seed), _) => seed.parse().map(RngSeed::Fixed).unwrap_or(RngSeed::Random),
            (_, Ok(_)) => RngSeed::Random,
            _ => RngSeed::Fixed(0x5eed_0012),
        },
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_reference_model(ops in prop::collection::vec(op(), 1..30)) {
        let outcome = run(&ops, engine_rules());
        prop_assert!(outcome.is_ok(), "{}", outcome.err().unwrap_or_default());
    }
}

/// The random sequences reach every interesting outcome (so the agreement above means
/// something): deferred creates, both kinds of break, completions, every refusal, durable
/// reconnects, deletes. Counts are printed with `--nocapture`.
#[test]
fn random_sequences_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        proptest::test_runner::TestRng::deterministic_rng(RunnerConfig::default().rng_algorithm),
    );
    let strategy = prop::collection::vec(op(), 1..30);
    let mut text = String::new();
    for _ in 0..300 {
        let ops = strategy
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        let mut d = Driver::new(engine_rules());
        for op in &ops {
            if d.run(op).is_err() {
                break;
            }
        }
        text.push_str(&d.trace.join("\n"));
    }
    let wanted = [
        "-> Pending",
        "OplockBreak {",
        "LeaseBreak {",
        "ack_required: true",
        "ack_required: false",
        "Completed {",
        "reply: Opened",
        "reply: Done(SharingViolation)",
        "Done(SharingViolation)",
        "Done(DeletePending)",
        "Done(LockNotGranted)",
        "Done(Cancelled)",
        "Done(FileLockConflict)",
        "Done(RangeNotLocked)",
        "-> Durable { h",
        "delete_file: true",
        "Usage {",
        "grant: Lease(7)",
        "grant: Oplock(Batch)",
        "grant: Oplock(LevelII)",
    ];
    let mut missing = Vec::new();
    for w in wanted {
        let n = text.matches(w).count();
        println!("{w:32} {n}");
        if n == 0 {
            missing.push(w);
        }
    }
    assert!(missing.is_empty(), "no random sequence reached {missing:?}");
}

// ----- regression cases: the model against the engine before issue 12's fixes ----------------
//
// Each sequence is the shrunk failing case the differential test printed when run against the
// engine just before the named fix (driver adapted to that engine's API: no stream_base, no
// SetDurable.persistent; file indices below are today's). They agree on today's engine.

fn open_op(client: u8, file: u8, access: u8, share: u8, caching: u8) -> Op {
    Op::Open {
        client,
        file,
        access,
        share,
        caching,
        lease_key: 0,
        overwrite: false,
        doc: false,
        resp: 0,
    }
}

fn agrees(ops: &[Op], rules: Rules) {
    if let Err(e) = run(ops, rules) {
        panic!("{e}");
    }
}

/// Issue 12 item 1 (fixed in 29fef94): delete-pending set through a handle without a lease
/// must first break the other client's RH lease to R (MS-FSA 2.1.4.12; smb2.lease.unlink).
/// Before the fix `BreakForRename` answered Done(Success) and broke nobody.
#[test]
fn finding_1_delete_pending_breaks_handle_caching() {
    agrees(
        &[
            open_op(0, 0, 0, 3, 5), // client 0: read, share RWD, RH lease
            open_op(1, 0, 3, 3, 0), // client 1: DELETE, share RWD, no caching
            Op::SetDelete {
                open: 1,
                delete: true,
                resp: 0,
            },
        ],
        engine_rules(),
    );
}

/// Issue 12 item 1, delete-on-close flavour (found by the random test with leases asked only
/// by a file's first opener, to keep item 6 out of the way): closing a delete-on-close handle
/// breaks the other client's RH lease on that file first.
#[test]
fn finding_1_delete_on_close_breaks_handle_caching() {
    agrees(
        &[
            open_op(0, 0, 0, 0, 2), // file A, exclusive oplock
            open_op(0, 2, 0, 3, 5), // file B, RH lease
            Op::Open {
                client: 0,
                file: 0,
                access: 0,
                share: 0,
                caching: 0,
                lease_key: 0,
                overwrite: true,
                doc: false,
                resp: 55, // the holder of A closes instead of acking
            },
            Op::Open {
                client: 0,
                file: 2,
                access: 3,
                share: 1,
                caching: 0,
                lease_key: 0,
                overwrite: false,
                doc: true,
                resp: 0,
            },
            Op::Close { open: 1, resp: 0 }, // the delete-on-close open of B
        ],
        engine_rules(),
    );
}

/// Issue 12 item 2 (fixed in 29fef94): a rename through a handle without a lease (here a stat
/// open) breaks a batch oplock to None. Before the fix the engine returned early.
#[test]
fn finding_2_rename_without_lease_breaks_batch_oplock() {
    agrees(
        &[
            open_op(0, 0, 5, 0, 0), // stat open
            open_op(0, 0, 0, 0, 3), // read, batch oplock
            Op::Rename { open: 2, resp: 0 },
        ],
        engine_rules(),
    );
}

/// Issue 12 item 6 (fixed in 097000b): an RH lease asked next to a plain open (DELETE access,
/// no caching) keeps H (MS-FSA 2.1.5.17.2 refuses H only next to oplocks). Before the fix the
/// grant was R.
#[test]
fn finding_6_lease_keeps_handle_caching_next_to_plain_open() {
    agrees(
        &[open_op(0, 3, 3, 3, 0), open_op(0, 3, 0, 3, 5)],
        engine_rules(),
    );
}

/// Issue 12 item 7 (fixed in 559c48c): a lock that the granted locks allow is granted although
/// an earlier request waits (MS-FSA 2.1.5.7 checks granted locks only). Here a zero-length
/// exclusive lock at 3 blocks a shared [0, 2^64-1) waiter, and a zero-length exclusive lock at 1
/// conflicts with neither granted lock; before the fix it queued behind the waiter.
#[test]
fn finding_7_waiters_do_not_block_compatible_locks() {
    agrees(
        &[
            open_op(0, 0, 0, 0, 0),
            Op::Lock {
                open: 0,
                off: 2,
                len: 0,
                excl: true,
                fail: false,
            },
            open_op(0, 0, 5, 0, 0),
            Op::Lock {
                open: 1,
                off: 0,
                len: 4,
                excl: false,
                fail: false,
            },
            Op::Lock {
                open: 0,
                off: 1,
                len: 0,
                excl: true,
                fail: false,
            },
        ],
        engine_rules(),
    );
}

/// Issue 12 item 5 (fixed in 29fef94; caught as well): a durable open without a batch oplock or
/// an H lease is closed on disconnect (MS-SMB2 3.3.7.1). Before the fix it was kept.
#[test]
fn finding_5_durable_without_handle_caching_closes_on_disconnect() {
    agrees(
        &[open_op(0, 0, 0, 0, 0), Op::Vanish { open: 0, resp: 0 }],
        engine_rules(),
    );
}

// ----- new disagreements with today's engine (reported, not fixed here) ------------------------

/// An overwrite that fails with a sharing violation and finds no handle caching to break should
/// break nobody: MS-FSA 2.1.5.1.2 runs the sharing check before the oplock-break check
/// (2.1.4.12). The engine (like Samba) breaks the exclusive oplock to None anyway, without
/// waiting, and fails the create. Allowed in `engine_rules` as
/// `failed_overwrite_breaks_caching`.
#[test]
#[ignore = "engine breaks caching for an overwrite that fails with a sharing violation (Samba order, not MS-FSA's)"]
fn failed_overwrite_breaks_nobody() {
    agrees(
        &[
            open_op(0, 0, 0, 0, 2), // read, share none, exclusive oplock
            Op::Open {
                client: 1,
                file: 0,
                access: 0,
                share: 0,
                caching: 0,
                lease_key: 0,
                overwrite: true,
                doc: false,
                resp: 0,
            },
        ],
        Rules {
            failed_overwrite_breaks_caching: false,
            ..engine_rules()
        },
    );
}

/// A lease upgrade that cannot get W should still get the rest: client 2 holds R, a plain open
/// of another client exists, and client 2 asks RWH on the same key. MS-SMB2 3.3.5.9.8 retries
/// without W, giving RH (a superset of R); the engine keeps R.
#[test]
#[ignore = "engine keeps a lease's old state when an upgrade cannot be granted in full"]
fn partial_lease_upgrade_grants_what_it_can() {
    agrees(
        &[
            open_op(0, 0, 0, 3, 0),
            Op::Open {
                client: 2,
                file: 0,
                access: 0,
                share: 3,
                caching: 4,
                lease_key: 1,
                overwrite: false,
                doc: false,
                resp: 0,
            },
            Op::Open {
                client: 2,
                file: 0,
                access: 0,
                share: 3,
                caching: 7,
                lease_key: 1,
                overwrite: false,
                doc: false,
                resp: 0,
            },
        ],
        Rules {
            lease_upgrade_all_or_nothing: false,
            ..engine_rules()
        },
    );
}

/// A create that fails with DELETE_PENDING (MS-FSA 2.1.5.1.2 checks that before sharing)
/// should leave a disconnected durable open alone; the engine closes it first, so the client's
/// later reconnect finds nothing. Here: a named stream's durable RH open is disconnected, the
/// stream is made delete-pending by a delete-on-close open lost with its connection, and a
/// conflicting open of the stream is refused.
#[test]
#[ignore = "engine purges a conflicting disconnected durable open before failing the create with DELETE_PENDING"]
fn delete_pending_create_leaves_durable_open() {
    agrees(
        &[
            open_op(0, 1, 0, 3, 5),
            Op::Vanish { open: 0, resp: 0 },
            Op::Open {
                client: 0,
                file: 1,
                access: 3,
                share: 1,
                caching: 0,
                lease_key: 0,
                overwrite: false,
                doc: true,
                resp: 0,
            },
            Op::Vanish { open: 0, resp: 0 },
            open_op(0, 1, 0, 0, 0),
            Op::Reclaim {
                which: 0,
                client: 0,
            },
        ],
        Rules {
            purge_before_delete_pending_check: false,
            ..engine_rules()
        },
    );
}

/// A create waits for a lease break (RH -> R) sent to the lease's connected open; that open
/// closes instead of acking, leaving only a disconnected durable open of the same lease. Nobody
/// can ack any more, so (as for breaks to disconnected holders, issue 12 item 4) the durable
/// open should be closed and the create go on; the engine leaves the break outstanding and the
/// create waits for the 35 s break timeout. (It does resolve the same situation for a write-
/// caching break of a file lease; this case is a handle-caching break for a sharing violation
/// on a directory. Random exploration, REFMODEL_EXPLORE=1, meets it about once in 30000
/// sequences; not in the CI seed's.)
#[test]
#[ignore = "a break left to a disconnected lease holder is not resolved; the create waits for the timeout"]
fn break_left_to_disconnected_holder_resolves() {
    agrees(
        &[
            open_op(2, 3, 0, 3, 4), // client 2, directory, R lease
            Op::Open {
                client: 2,
                file: 3,
                access: 0,
                share: 1,
                caching: 5,
                lease_key: 0,
                overwrite: false,
                doc: false,
                resp: 0,
            },
            Op::Vanish { open: 0, resp: 0 },
            Op::Open {
                client: 0,
                file: 3,
                access: 1,
                share: 1,
                caching: 0,
                lease_key: 0,
                overwrite: false,
                doc: false,
                resp: 1, // the connected holder closes instead of acking
            },
        ],
        engine_rules(),
    );
}

/// I/O grants: a node writing through its grant must never skip a break the model sends.
/// Client 0 opens with read/write (share all) and gets a grant; client 1 then asks for a
/// Level II oplock (granted only once the grant is recalled); client 0's write asks again
/// and breaks it. Without the recall before the caching grant the write would go through
/// the old grant, and the model's break of the Level II oplock would be missing.
#[test]
fn grant_recalled_before_read_caching() {
    let io = |open, write| Op::Io {
        open,
        off: 0,
        len: 1,
        write,
        grant: true,
    };
    agrees(
        &[
            open_op(0, 0, 2, 3, 0),
            io(0, false),
            open_op(1, 0, 2, 3, 1),
            io(0, true),
        ],
        engine_rules(),
    );
}

/// I/O grants: a lock of another node is granted only after the grant is recalled, so the
/// granted node's next write sees the conflict; a node's own lock needs no recall.
#[test]
fn grant_recalled_before_lock() {
    let io = |open, write| Op::Io {
        open,
        off: 0,
        len: 1,
        write,
        grant: true,
    };
    agrees(
        &[
            open_op(0, 0, 2, 3, 0),
            open_op(1, 0, 2, 3, 0),
            io(0, true),
            Op::Lock {
                open: 1,
                off: 0,
                len: 1,
                excl: true,
                fail: true,
            },
            io(0, true),
            io(1, true),
            Op::Unlock {
                open: 1,
                off: 0,
                len: 1,
            },
            io(1, true),
            Op::Lock {
                open: 1,
                off: 0,
                len: 1,
                excl: false,
                fail: true,
            },
            io(1, true),
        ],
        engine_rules(),
    );
}
