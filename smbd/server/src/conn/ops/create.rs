//! CREATE (MS-SMB2 3.3.5.9): name resolution, access checks, the lock service's share-mode and
//! oplock/lease decision (possibly asynchronous), then the open itself.

use smb_proto::fscc::notify_filter;
use smb_proto::NtStatus;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use smb_proto::{
    create_action, create_options, ctx as cctx, disposition, oplock_level, status, CreateContext,
    CreateRequest, CreateResponse, FileId, Header, LeaseContext, Response,
};

use super::{
    channel_sequence, engine_status, io_status, open_checked, oplock_grant_level, parent_and_name,
    path_status, unix_may_delete, update_dos, APPEND_DATA, ATTR_SPARSE, DELETE, EXECUTE,
    FILE_ACTION_ADDED, FULL_ACCESS, QUOTA_FAKE_FILE, READ_ACCESS, READ_DATA, WRITE_ATTRIBUTES,
    WRITE_DATA,
};
use crate::beneath::ShareRoot;
use crate::conn::{
    err, ChainCtx, Conn, CreateCont, HangupWait, Open, Outcome, PendingKind, StreamTarget,
};
use crate::fs::{self, FileInfo};
use crate::locking::{
    self, map_generic, Lease, LeaseKey, LeaseState, OpenRequest, OplockGrant, OplockLevel,
    OplockRequest, Reply,
};
use crate::streams;

impl Conn {
    /// The rest of a compound that waited for an async CREATE (MS-SMB2 <206>) runs now, with
    /// the CREATE's status and file id as the related chain's.
    pub(crate) fn resume_chain_after_create(
        &mut self,
        rest: Option<(Vec<Vec<u8>>, ChainCtx)>,
        st: NtStatus,
        fid: Option<FileId>,
    ) {
        let Some((msgs, mut ctx)) = rest else {
            return;
        };
        ctx.prev_status = st;
        ctx.file_id = fid;
        if st != status::SUCCESS {
            ctx.create_err = Some(st);
        }
        let first = ctx.index + 1;
        self.run_chain(msgs, first, ctx);
    }

    pub(crate) fn create(
        &mut self,
        mut c: CreateRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        if let Some(Some(i)) = self.tree_share(ctx) {
            let sh = &self.shared.shares[i];
            if sh.dfs_root {
                // MS-SMB2 3.3.5.9: on a DFS share, SMB2_FLAGS_DFS_OPERATIONS names the file
                // as server\share\path.
                if hdr.flags & smb_proto::header::flags::DFS_OPERATIONS != 0 {
                    c.name = crate::dfs::strip_dfs_prefix(&c.name).to_string();
                }
                // A path through a DFS link is not here: STATUS_PATH_NOT_COVERED makes the
                // client ask for the link's referral (MS-DFSC 3.1.5.1).
                // The name as the file service will resolve it (`..` taken back), so that
                // `x\..\link\f` reaches the link and `link\..\f` does not.
                let base = c.name.split(':').next().unwrap_or("");
                if let Ok(comps) = fs::split_smb_path(base.trim_start_matches('\\')) {
                    if crate::dfs::link_for(sh, &comps).is_some() {
                        return err(status::PATH_NOT_COVERED);
                    }
                }
            }
        }
        // Another connection (or node) may create the name between our lookup and our
        // O_EXCL create / mkdir. For OPEN_IF, OVERWRITE_IF and SUPERSEDE that is not an error:
        // the name exists now, so the create runs again as an open of the existing file
        // (smbtorture create.mkdir-dup: one CREATED, one EXISTED).
        let retry = (c.disposition != disposition::CREATE
            && c.disposition != disposition::OPEN
            && c.disposition != disposition::OVERWRITE)
            .then(|| c.clone());
        // The other way round, a file found at the lookup may be gone before it is opened:
        // another connection's last handle, delete-on-close, unlinks it after the lock service
        // let its share mode go (smbtorture durable-open.delete_on_close1 reopens the name as
        // the disconnected handle's teardown deletes it). For these dispositions a missing
        // name is then created, so the create runs again too; OBJECT_NAME_NOT_FOUND cannot be
        // their answer otherwise (a missing parent is OBJECT_PATH_NOT_FOUND).
        let again = c.clone();
        self.create_raced = false;
        let out = self.create_attempt(c, hdr, ctx);
        let vanished =
            matches!(&out, Outcome::Reply(st, _) if *st == status::OBJECT_NAME_NOT_FOUND);
        let out = match retry {
            Some(c) if std::mem::take(&mut self.create_raced) || vanished => {
                self.create_attempt(c, hdr, ctx)
            }
            _ => out,
        };
        self.wait_for_hung_up_if_conflict(out, again, hdr, ctx)
    }

    /// A CREATE refused for a sharing violation or a delete-pending file may have met the
    /// opens of a connection whose client has hung up but which its worker has not torn down
    /// yet (crate::hangup): the client saw that connection end before it sent this request,
    /// and the server closes a lost connection's opens (MS-SMB2 3.3.7.1), so the CREATE
    /// waits for that teardown and is decided again ([`Conn::hangup_done`]), as a durable
    /// reconnect waits for its old connection. Any other answer stands.
    fn wait_for_hung_up_if_conflict(
        &mut self,
        out: Outcome,
        request: CreateRequest,
        hdr: &Header,
        ctx: &ChainCtx,
    ) -> Outcome {
        let conflict = matches!(
            &out,
            Outcome::Reply(st, _) if *st == status::SHARING_VIOLATION || *st == status::DELETE_PENDING
        );
        if !conflict {
            return out;
        }
        let waiting = self.shared.wait_for_hung_up(self.id);
        if waiting.is_empty() {
            return out;
        }
        tracing::debug!(
            conn = self.id,
            ?waiting,
            name = %request.name,
            "create conflicts while hung-up connections are not torn down: waiting for them"
        );
        let wait = HangupWait {
            request,
            hdr: *hdr,
            ctx: ctx.clone(),
            waiting,
        };
        Outcome::Pending(self.go_async(hdr, ctx, PendingKind::AfterHangup(Box::new(wait))))
    }

    /// Connection `gone`, whose client had hung up, is torn down (Event::HangupDone): the
    /// CREATEs that waited for it and for nothing else are decided again, under the async id
    /// their interim response named.
    pub(crate) fn hangup_done(&mut self, gone: u64) {
        let mut ready = Vec::new();
        for (aid, p) in self.pending.iter_mut() {
            if let PendingKind::AfterHangup(w) = &mut p.kind {
                if w.waiting.contains(&gone) {
                    w.waiting.retain(|c| *c != gone);
                    if w.waiting.is_empty() {
                        ready.push(*aid);
                    }
                }
            }
        }
        ready.sort_unstable();
        for aid in ready {
            let Some(p) = self.pending.get_mut(&aid) else {
                continue;
            };
            let rest = p.rest.take();
            let channel = p.channel;
            let PendingKind::AfterHangup(w) = &p.kind else {
                continue;
            };
            let (request, hdr, mut ctx) = (w.request.clone(), w.hdr, w.ctx.clone());
            // The CREATE continues with its session's credentials, on its channel.
            if let Some(id) = self
                .sessions
                .get(&hdr.session_id)
                .and_then(|s| s.identity.clone())
            {
                crate::identity::become_user(&id);
            }
            let outer = std::mem::replace(&mut self.cur_channel, channel);
            let out = self.create(request, &hdr, &mut ctx);
            self.cur_channel = outer;
            match out {
                Outcome::Pending(again) => {
                    // Waiting again (an oplock break, another hung-up connection): the new
                    // wait keeps the async id the client knows.
                    if let Some(mut np) = self.pending.remove(&again) {
                        np.rest = rest;
                        self.pending.insert(aid, np);
                    }
                }
                Outcome::Reply(st, body) => {
                    self.complete_async(aid, st, body);
                    self.resume_chain_after_create(rest, st, ctx.file_id);
                }
                Outcome::Nothing | Outcome::Deferred(_) => {
                    self.complete_async(
                        aid,
                        status::INTERNAL_ERROR,
                        Response::Error { data: vec![] },
                    );
                    self.resume_chain_after_create(rest, status::INTERNAL_ERROR, None);
                }
            }
        }
    }

    pub(super) fn create_attempt(
        &mut self,
        c: CreateRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        let Some(share) = self.tree_share(ctx) else {
            return err(status::NETWORK_NAME_DELETED);
        };
        let Some(share) = share else {
            // IPC$: no named pipes are served.
            return err(status::OBJECT_NAME_NOT_FOUND);
        };
        let reconnect = match smb_proto::create_ctx::reconnect_request(&c) {
            Ok(r) => r,
            Err(st) => return err(st),
        };
        if let Some(rc) = reconnect {
            return self.durable_reconnect(&c, rc, hdr, ctx, share);
        }
        let durable = match smb_proto::create_ctx::durable_request(&c, self.dialect()) {
            Ok(d) => d,
            Err(st) => return err(st),
        };
        if let Some(smb_proto::create_ctx::DurableKind::V2 { create_guid, .. }) = &durable {
            if let Some(out) = self.replayed_create(&c, *create_guid, hdr, ctx, share) {
                return out;
            }
        }
        if c.impersonation_level > 3 {
            return err(status::BAD_IMPERSONATION_LEVEL);
        }
        if c.options & create_options::DIRECTORY_FILE != 0
            && c.options & create_options::NON_DIRECTORY_FILE != 0
        {
            return err(status::INVALID_PARAMETER);
        }
        if c.disposition > disposition::OVERWRITE_IF {
            return err(status::INVALID_PARAMETER);
        }
        if !matches!(
            c.oplock_level,
            oplock_level::NONE
                | oplock_level::II
                | oplock_level::EXCLUSIVE
                | oplock_level::BATCH
                | oplock_level::LEASE
        ) {
            return err(status::INVALID_PARAMETER);
        }
        // MS-SMB2 3.3.5.9: reserved CreateOptions bits and access bits are rejected.
        if c.options & 0xFF00_0000 != 0 || c.file_attributes & !0x0003_7FB7 != 0 {
            return err(status::INVALID_PARAMETER);
        }
        if c.desired_access & 0x0CE0_FE00 != 0 {
            return err(status::ACCESS_DENIED);
        }
        // MS-SMB2 3.3.5.9: create context names are at least 4 bytes.
        if c.contexts.iter().any(|x| x.name.len() < 4) {
            return err(status::INVALID_PARAMETER);
        }
        if c.context(cctx::TWRP).is_some() {
            // Previous versions (timewarp): this server keeps no snapshots.
            return err(status::OBJECT_NAME_NOT_FOUND);
        }
        // Windows' quota file, which Samba fakes (smbtorture create.quota-fake-file): served
        // as a read-only view of the share root with fixed attributes and zero times.
        let fake_quota = c.name.eq_ignore_ascii_case(QUOTA_FAKE_FILE);
        if fake_quota
            && (!matches!(c.disposition, disposition::OPEN | disposition::OPEN_IF)
                || map_generic(c.desired_access) & !(READ_ACCESS | 0x0010_0000) != 0)
        {
            return err(status::ACCESS_DENIED);
        }
        let sp = match streams::parse(if fake_quota { "" } else { &c.name }) {
            Ok(sp) => sp,
            Err(st) => return err(st),
        };
        let comps = match fs::split_smb_path(sp.base) {
            Ok(c) => c,
            Err(st) => return err(st),
        };
        // The stream depot is server-private.
        if comps.first().is_some_and(|c| streams::is_depot(c)) {
            return err(status::ACCESS_DENIED);
        }
        if sp.stream.is_some() && c.options & create_options::DIRECTORY_FILE != 0 {
            // MS-FSA 2.1.5.1: a named stream is never a directory.
            return err(status::NOT_A_DIRECTORY);
        }
        let sh = &self.shared.shares[share];
        let root = sh.root.clone();
        let share_dir = sh.dir.clone();
        let read_only = sh.read_only;
        let fs_id = sh.fs_id;
        let res = match fs::resolve(&root, &comps) {
            Ok(r) => r,
            Err(st) => return err(st),
        };
        let mut access = map_generic(c.desired_access);
        if c.desired_access & locking::access_bits::MAXIMUM_ALLOWED != 0 {
            access |= FULL_ACCESS;
        }
        if read_only {
            if access & (WRITE_DATA | APPEND_DATA | DELETE | 0x10 | WRITE_ATTRIBUTES) != 0
                && c.desired_access & locking::access_bits::MAXIMUM_ALLOWED == 0
            {
                return err(status::ACCESS_DENIED);
            }
            access &= READ_ACCESS;
        }
        // FILE_CREATE of an existing file fails with a name collision before any access
        // check (smbtorture delete-on-close-perms "CREATE Existing").
        let collides = sp.stream.is_none() && c.disposition == disposition::CREATE;
        if res.exists && !fake_quota && !collides {
            let token = self
                .sessions
                .get(&ctx.session_id)
                .map(|s| s.token())
                .unwrap_or_default();
            match Self::check_stored_acl(&res.abs, access, c.desired_access, &token) {
                Ok(a) => access = a,
                Err(st) => return err(st),
            }
        }
        if res.exists && !fake_quota && sp.stream.is_none() && access & DELETE != 0 {
            // DELETE is only as good as the kernel will let the user unlink (write and search
            // permission on the parent, sticky-bit ownership): refuse it here, when it is
            // asked for, rather than fail silently at close (MS-FSA 2.1.5.1.2.1 checks DELETE
            // at open; Samba's can_delete_file_in_directory does the same).
            if !unix_may_delete(&res.abs) {
                let explicit =
                    map_generic(c.desired_access & !locking::access_bits::MAXIMUM_ALLOWED);
                if explicit & DELETE != 0 {
                    return err(status::ACCESS_DENIED);
                }
                access &= !DELETE;
            }
        }
        let delete_on_close = c.options & create_options::DELETE_ON_CLOSE != 0;
        if delete_on_close && access & DELETE == 0 {
            return err(status::ACCESS_DENIED);
        }
        let dir_req = c.options & create_options::DIRECTORY_FILE != 0;
        let nondir_req = c.options & create_options::NON_DIRECTORY_FILE != 0;
        let mut created_now = false;
        let mut make_read_only = false;
        let mut overwrite_attributes = None;
        let is_dir;
        let mut stream = None;
        let mut existed = res.exists;
        if let Some(sname) = &sp.stream {
            let t = match self.open_stream_target(&root, &share_dir, &res, sname, &c, read_only) {
                Ok(t) => t,
                Err(st) => return err(st),
            };
            existed = !t.created;
            created_now = t.created;
            is_dir = false;
            stream = Some(t);
        } else if res.exists {
            let meta = match fs::metadata(&res.abs) {
                Ok(m) => m,
                Err(e) => return err(io_status(&e)),
            };
            is_dir = meta.is_dir();
            if c.disposition == disposition::CREATE {
                return err(status::OBJECT_NAME_COLLISION);
            }
            // `dir::$DATA` names a data stream a directory does not have (smbtorture
            // smb2.streams.dir): refused before any sharing check, as not a directory when
            // asked for one, as a directory when asked for a file.
            if is_dir && !fake_quota && c.name.contains(':') {
                return err(if dir_req {
                    status::NOT_A_DIRECTORY
                } else {
                    status::FILE_IS_A_DIRECTORY
                });
            }
            if is_dir && nondir_req {
                return err(status::FILE_IS_A_DIRECTORY);
            }
            if !is_dir && dir_req {
                return err(status::NOT_A_DIRECTORY);
            }
            let overwrite = matches!(
                c.disposition,
                disposition::OVERWRITE | disposition::OVERWRITE_IF | disposition::SUPERSEDE
            );
            if is_dir && overwrite {
                return err(status::INVALID_PARAMETER);
            }
            let ro_attr = meta.permissions().mode() & 0o200 == 0;
            if ro_attr && !is_dir {
                if delete_on_close {
                    return err(status::CANNOT_DELETE);
                }
                if access & (WRITE_DATA | APPEND_DATA) != 0 || overwrite {
                    return err(status::ACCESS_DENIED);
                }
            }
            if read_only && overwrite {
                return err(status::ACCESS_DENIED);
            }
            // MS-FSA 2.1.5.1.2.2: overwriting a hidden or system file must ask for the same
            // attribute (smbtorture smb2.openattr: ACCESS_DENIED otherwise).
            if matches!(
                c.disposition,
                disposition::OVERWRITE | disposition::OVERWRITE_IF
            ) {
                let old = crate::dosattr::load(&res.abs).map_or(0, |d| d.attributes);
                let keep = fs::attr::HIDDEN | fs::attr::SYSTEM;
                if old & keep & !c.file_attributes != 0 {
                    return err(status::ACCESS_DENIED);
                }
            }
            if overwrite && !is_dir {
                overwrite_attributes = Some(c.file_attributes);
            }
        } else {
            if matches!(c.disposition, disposition::OPEN | disposition::OVERWRITE) {
                return err(status::OBJECT_NAME_NOT_FOUND);
            }
            if read_only {
                return err(status::MEDIA_WRITE_PROTECTED);
            }
            // MS-FSA 2.1.5.1.2.1: a new read-only file cannot be delete-on-close.
            if delete_on_close && c.file_attributes & fs::attr::READONLY != 0 {
                return err(status::CANNOT_DELETE);
            }
            let r = if dir_req {
                share_dir.mkdir(&res.rel, 0o777).map(|_| None)
            } else {
                share_dir
                    .open_file(
                        &res.rel,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                        0o666,
                    )
                    .map(Some)
            };
            let new_file = match r {
                Ok(f) => f,
                Err(e) => {
                    self.create_raced = e.kind() == std::io::ErrorKind::AlreadyExists;
                    return err(path_status(&e));
                }
            };
            // READONLY (mode 0444) is applied to the new file once its handle is open
            // (finish_create): the creator's own open may write (MS-FSA 2.1.5.1.1), and the
            // kernel would refuse the user a writable open of a 0444 file.
            make_read_only = c.file_attributes & fs::attr::READONLY != 0 && !dir_req;
            created_now = true;
            is_dir = dir_req;
            // SMB2_CREATE_SD_BUFFER (MS-SMB2 2.2.13.2.2): the new file's descriptor; without
            // one the parent's inheritable ACEs apply.
            let inherited = res
                .abs
                .parent()
                .and_then(|p| crate::sd::inherit(&crate::sd::load(p), dir_req));
            if let (None, Some(p)) = (c.context(cctx::SECD), inherited) {
                if let Err(e) = crate::sd::store(&res.abs, &p) {
                    tracing::debug!(%e, "inherited descriptor not stored");
                }
            }
            if let Some(x) = c.context(cctx::SECD) {
                let all = smb_proto::security_descriptor::ALL_SECURITY_INFORMATION;
                let stored = crate::sd::decode(&x.data, all)
                    .map_err(|st| std::io::Error::other(format!("{st:#x}")))
                    .and_then(|p| crate::sd::store(&res.abs, &p));
                if let Err(e) = stored {
                    tracing::debug!(%e, "SecD create context not stored");
                }
            }
            if let Ok(m) = fs::metadata(&res.abs) {
                use std::os::unix::fs::MetadataExt;
                // An inode number reused after an outside delete must not inherit streams.
                streams::remove_all(&root, m.ino());
            }
            // Sparseness is only set by FSCTL_SET_SPARSE, never by CREATE.
            let attrs = c.file_attributes & !(fs::attr::NORMAL | fs::attr::DIRECTORY | ATTR_SPARSE);
            let now = self.shared.clock.filetime();
            same_times_as_creation(new_file.as_ref(), now);
            update_dos(&res.abs, |d, _| {
                d.creation = now;
                // New files are marked for archiving whatever else was asked (Windows,
                // Samba with "map archive").
                d.attributes = if dir_req {
                    attrs
                } else {
                    attrs | fs::attr::ARCHIVE
                };
            });
            let (parent, n) = parent_and_name(&res.abs);
            self.shared
                .dir_changed(parent, FILE_ACTION_ADDED, notify_filter::name(dir_req), n);
        }
        let ino = fs::metadata(&res.abs).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        let ino = match ino {
            Ok(i) => i,
            Err(e) => return err(io_status(&e)),
        };
        // Each stream is its own lock-service file (own share modes, oplocks, leases); the
        // name is case-folded because stream names are case-insensitive.
        let stable_id = fs::stable_file_id(
            fs_id,
            if fake_quota { 0 } else { ino },
            &stream
                .as_ref()
                .map(|t| t.name.to_lowercase())
                .unwrap_or_default(),
        );
        // No directory leases: SMB2_GLOBAL_CAP_DIRECTORY_LEASING is not offered, so a
        // directory open gets neither a lease nor an oplock (MS-SMB2 3.3.5.9.8).
        let requested_lease = if c.oplock_level == oplock_level::LEASE && self.dialect() >= 0x0210 {
            smb_proto::create_ctx::lease_request(&c)
        } else {
            None
        };
        // MS-SMB2 3.3.5.9.8: a lease key already in use for another file is refused (also
        // for a directory, which then would not get the lease anyway).
        if let Some(l) = &requested_lease {
            let clash = self.opens.values().any(|o| {
                o.stable_id != stable_id
                    && matches!(&o.grant, OplockGrant::Lease(g) if g.key.0 == l.key)
            });
            if clash {
                if let Some(t) = &stream {
                    if t.created {
                        let _ = streams::remove_data(&t.path);
                    }
                    if t.base_created {
                        let _ = share_dir.unlink(&res.rel, false);
                    }
                } else if created_now {
                    let _ = share_dir.unlink(&res.rel, is_dir);
                }
                return err(status::INVALID_PARAMETER);
            }
        }
        let lease = if is_dir { None } else { requested_lease };
        let oplock = match (
            if is_dir {
                oplock_level::NONE
            } else {
                c.oplock_level
            },
            &lease,
        ) {
            (oplock_level::LEASE, Some(l)) => OplockRequest::Lease(Lease {
                key: LeaseKey(l.key),
                state: LeaseState((l.state & 0x7) as u8),
                parent_key: l.parent_key.map(LeaseKey),
                epoch: l.epoch,
                breaking: false,
            }),
            (lvl, _) => match OplockLevel::from_wire(lvl) {
                Some(OplockLevel::None) | None => OplockRequest::None,
                Some(l) => OplockRequest::Oplock(l),
            },
        };
        let durable = self.durable_to_ask(share, is_dir, durable);
        self.next_volatile += 1;
        let cont = CreateCont {
            file_id: self.next_volatile,
            session_id: ctx.session_id,
            tree_id: ctx.tree_id,
            share,
            abs: res.abs.clone(),
            rel: res.rel.clone(),
            existed,
            created_now,
            stream,
            is_dir,
            access,
            disposition: c.disposition,
            stable_id,
            lease,
            want_mxac: c.context(cctx::MXAC).is_some(),
            want_qfid: c.context(cctx::QFID).is_some(),
            allocation: smb_proto::create_ctx::allocation_size_request(&c),
            delete_on_close,
            durable,
            share_access: c.share_access & 0x7,
            fake_quota,
            make_read_only,
            overwrite_attributes,
            channel_sequence: channel_sequence(hdr),
        };
        self.shared.parked.purge_conflicting(
            stable_id,
            access,
            c.share_access & 0x7,
            cont.lease.as_ref().map(|l| l.key),
            self.now,
        );
        let req = OpenRequest {
            file: locking::FileId(stable_id),
            access,
            share: c.share_access & 0x7,
            delete_on_close,
            directory: is_dir,
            overwrite: existed
                && matches!(
                    c.disposition,
                    disposition::OVERWRITE | disposition::OVERWRITE_IF | disposition::SUPERSEDE
                ),
            client_guid: self.client_guid(),
            oplock,
            // A named stream shares its file's delete state: the engine refuses it while the
            // file is delete-pending and lets it stand in the way of DELETE opens of the file
            // (MS-FSA 2.1.5.1.2.1). The file's id is its unnamed stream's (empty name).
            stream_base: cont
                .stream
                .as_ref()
                .map(|_| locking::FileId(fs::stable_file_id(fs_id, ino, ""))),
            // Delete-pending is the name's, not the inode's (MS-FSA 2.1.5.14.3): hard links
            // of one file are told apart by their directory entry.
            link: fs::link_id(fs_id, &res.abs, is_dir),
            // An open that may READ or WRITE takes an I/O grant with it when the file allows
            // one, so its first READ/WRITE costs no round trip either.
            io_grant: !is_dir && access & (READ_DATA | WRITE_DATA | APPEND_DATA | EXECUTE) != 0,
        };
        // One round trip: the open, and its durability if asked for (MS-SMB2 3.3.5.9.6).
        let lock_req = match cont
            .durable
            .as_ref()
            .and_then(|kind| self.durable_request(&cont, kind, cont.file_id))
        {
            Some(durable) => locking::Request::OpenDurable { open: req, durable },
            None => locking::Request::Open(req),
        };
        // An I/O grant the reply carries is in the node's grant table already (`Shared`).
        match self.shared.lock_request(self.id, hdr.message_id, lock_req) {
            Reply::Opened { open, grant }
            | Reply::OpenedIo {
                open,
                grant,
                durable: false,
                ..
            } => {
                let (out, fid) = self.finish_create(cont, open, grant, false);
                if let Some(fid) = fid {
                    ctx.file_id = Some(fid);
                }
                out
            }
            Reply::OpenedDurable { open, grant }
            | Reply::OpenedIo {
                open,
                grant,
                durable: true,
                ..
            } => {
                let (out, fid) = self.finish_create(cont, open, grant, true);
                if let Some(fid) = fid {
                    ctx.file_id = Some(fid);
                }
                out
            }
            Reply::Pending => {
                let aid = self.go_async(hdr, ctx, PendingKind::Create(Box::new(cont)));
                Outcome::Pending(aid)
            }
            Reply::Done(st) => {
                Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                err(engine_status(st))
            }
            other => {
                tracing::warn!(?other, "unexpected lock reply to open");
                Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                err(status::INTERNAL_ERROR)
            }
        }
    }

    /// Give back a granted lock-service open whose CREATE failed after the grant (with a
    /// durable record, if the grant made one).
    fn release_lock_open(&self, lock_open: locking::OpenId) {
        let _ = self
            .shared
            .lock_request(self.id, 0, locking::Request::Close { open: lock_open });
    }

    pub(super) fn undo_create(dir: &ShareRoot, cont: &CreateCont) {
        if let Some(t) = &cont.stream {
            if t.created {
                let _ = streams::remove_data(&t.path);
            }
            if t.base_created {
                let _ = dir.unlink(&cont.rel, false);
            }
            return;
        }
        if cont.created_now {
            let _ = dir.unlink(&cont.rel, cont.is_dir);
        }
    }

    /// Access check of an existing object against its stored DACL (MS-FSA 2.1.5.1.2.1,
    /// MS-DTYP 2.5.3.2). DELETE may also come from FILE_DELETE_CHILD on the parent.
    /// Returns the access to grant (MAXIMUM_ALLOWED resolved to what the DACL allows).
    pub(super) fn check_stored_acl(
        path: &Path,
        access: u32,
        desired: u32,
        token: &crate::sd::Token,
    ) -> Result<u32, NtStatus> {
        const SYNCHRONIZE: u32 = 0x0010_0000;
        const DELETE_CHILD: u32 = 0x40;
        let Some(mut granted) = crate::sd::granted(&crate::sd::load(path), token) else {
            return Ok(access);
        };
        granted |= SYNCHRONIZE;
        let parent_grants_delete = || {
            path.parent()
                .map(|p| {
                    crate::sd::granted(&crate::sd::load(p), token)
                        .is_none_or(|g| g & DELETE_CHILD != 0)
                })
                .unwrap_or(false)
        };
        if parent_grants_delete() {
            granted |= DELETE;
        }
        let max = desired & locking::access_bits::MAXIMUM_ALLOWED != 0;
        let explicit = map_generic(desired & !locking::access_bits::MAXIMUM_ALLOWED);
        if explicit & !granted != 0 {
            return Err(status::ACCESS_DENIED);
        }
        Ok(if max {
            explicit | (access & granted)
        } else {
            access
        })
    }

    /// Find or create the data file of named stream `sname` of `res` for CREATE `c`
    /// (MS-FSA 2.1.5.1.2: a missing base file is created when the disposition allows).
    pub(super) fn open_stream_target(
        &self,
        root: &Path,
        share_dir: &ShareRoot,
        res: &fs::Resolved,
        sname: &str,
        c: &CreateRequest,
        read_only: bool,
    ) -> Result<StreamTarget, NtStatus> {
        use std::os::unix::fs::MetadataExt;
        let may_create = !matches!(c.disposition, disposition::OPEN | disposition::OVERWRITE);
        let mut base_created = false;
        if !res.exists {
            if !may_create {
                return Err(status::OBJECT_NAME_NOT_FOUND);
            }
            if read_only {
                return Err(status::MEDIA_WRITE_PROTECTED);
            }
            let new_file = share_dir
                .open_file(
                    &res.rel,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o666,
                )
                .map_err(|e| path_status(&e))?;
            base_created = true;
            let attrs = c.file_attributes & !(fs::attr::NORMAL | fs::attr::DIRECTORY | ATTR_SPARSE);
            let now = self.shared.clock.filetime();
            same_times_as_creation(Some(&new_file), now);
            update_dos(&res.abs, |d, _| {
                d.creation = now;
                d.attributes = attrs | fs::attr::ARCHIVE;
            });
            let (parent, n) = parent_and_name(&res.abs);
            self.shared
                .dir_changed(parent, FILE_ACTION_ADDED, notify_filter::FILE_NAME, n);
        }
        let undo = |base_created: bool| {
            if base_created {
                let _ = share_dir.unlink(&res.rel, false);
            }
        };
        let ino = match fs::metadata(&res.abs) {
            Ok(m) => m.ino(),
            Err(e) => {
                undo(base_created);
                return Err(io_status(&e));
            }
        };
        if base_created {
            streams::remove_all(root, ino);
        }
        if let Some(e) = streams::find(root, ino, sname) {
            if c.disposition == disposition::CREATE {
                return Err(status::OBJECT_NAME_COLLISION);
            }
            return Ok(StreamTarget {
                name: e.name,
                path: e.path,
                created: false,
                base_created,
            });
        }
        if !may_create {
            undo(base_created);
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        if read_only {
            return Err(status::MEDIA_WRITE_PROTECTED);
        }
        match streams::create(root, ino, sname) {
            Ok(path) => Ok(StreamTarget {
                name: sname.to_string(),
                path,
                created: true,
                base_created,
            }),
            Err(e) => {
                undo(base_created);
                Err(io_status(&e))
            }
        }
    }

    /// The durable handle a CREATE asks the lock service for: MS-SMB2 3.3.5.9.10 grants a
    /// persistent handle only on a continuously available share (when the connection was
    /// offered persistent handles); directories get none.
    fn durable_to_ask(
        &self,
        share: usize,
        is_dir: bool,
        durable: Option<crate::durable::DurableKind>,
    ) -> Option<crate::durable::DurableKind> {
        let persistent_ok = self.shared.shares[share].continuous_availability
            && self
                .neg
                .as_ref()
                .is_some_and(|n| n.server_caps & smb_proto::caps::PERSISTENT_HANDLES != 0);
        durable.filter(|_| !is_dir).map(|mut kind| {
            if let smb_proto::create_ctx::DurableKind::V2 { persistent, .. } = &mut kind {
                *persistent &= persistent_ok;
            }
            kind
        })
    }

    /// A granted open's CREATE response and the connection's `Open`. `durable`: the lock
    /// service made the open durable ([`Reply::OpenedDurable`]).
    pub(crate) fn finish_create(
        &mut self,
        cont: CreateCont,
        lock_open: locking::OpenId,
        grant: OplockGrant,
        durable: bool,
    ) -> (Outcome, Option<FileId>) {
        let read_only = self.shared.shares[cont.share].read_only;
        let mut file = None;
        // A directory, or the base file of a stream, is held by an O_PATH descriptor: later
        // requests on the handle act on it, not on its name (open.rs, Open::pin).
        let mut pin = None;
        if cont.is_dir || cont.stream.is_some() {
            let dir = &self.shared.shares[cont.share].dir;
            match dir.open_file(&cont.rel, libc::O_PATH, 0) {
                Ok(p) => pin = Some(p),
                Err(e) => {
                    let _ = self.shared.lock_request(
                        self.id,
                        0,
                        locking::Request::Close { open: lock_open },
                    );
                    Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                    return (err(path_status(&e)), None);
                }
            }
        }
        if !cont.is_dir {
            let dir = &self.shared.shares[cont.share].dir;
            let f = match &cont.stream {
                // The user's access is checked on the base file; the stream's data lives in
                // the root-owned depot (streams.rs).
                Some(t) => open_checked(dir, &cont.rel, cont.access, read_only)
                    .and_then(|_| streams::open_data(&t.path, !read_only)),
                None => open_checked(dir, &cont.rel, cont.access, read_only),
            };
            match f {
                Ok(f) => {
                    if cont.make_read_only {
                        let _ = fs::make_read_only(&f);
                    }
                    file = Some(f)
                }
                Err(e) => {
                    self.release_lock_open(lock_open);
                    Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                    return (err(path_status(&e)), None);
                }
            }
        }
        let mut action = if cont.created_now {
            create_action::CREATED
        } else {
            create_action::OPENED
        };
        if cont.existed
            && matches!(
                cont.disposition,
                disposition::OVERWRITE | disposition::OVERWRITE_IF | disposition::SUPERSEDE
            )
        {
            if let Some(f) = &file {
                if let Err(e) = f.set_len(0) {
                    self.release_lock_open(lock_open);
                    return (err(io_status(&e)), None);
                }
                // MS-FSA 2.1.5.1.2.2: the overwritten file takes the attributes asked for,
                // marked for archiving (smbtorture smb2.openattr; Samba the same). READONLY
                // (mode 0444) only now that the handle is open, as for a new file.
                if let Some(attrs) = cont.overwrite_attributes {
                    let attrs = attrs & !(fs::attr::NORMAL | fs::attr::DIRECTORY | ATTR_SPARSE);
                    update_dos(&cont.abs, |d, _| {
                        d.attributes = attrs | fs::attr::ARCHIVE | (d.attributes & ATTR_SPARSE);
                    });
                    if attrs & fs::attr::READONLY != 0 {
                        let _ = fs::make_read_only(f);
                    }
                }
            }
            action = if cont.disposition == disposition::SUPERSEDE {
                create_action::SUPERSEDED
            } else {
                create_action::OVERWRITTEN
            };
        }
        if let (Some(alloc), Some(f)) = (cont.allocation, &file) {
            if alloc > 0 && action != create_action::OPENED {
                if let Err(e) = crate::sys::fallocate(f, libc::FALLOC_FL_KEEP_SIZE, 0, alloc) {
                    tracing::debug!(err = %e, "AlSi fallocate");
                }
            }
        }
        let info = match fs::metadata(&cont.abs) {
            Ok(m) => crate::fs::load_info(&cont.abs, &m, self.shared.clock.filetime()),
            Err(e) => {
                self.release_lock_open(lock_open);
                return (err(io_status(&e)), None);
            }
        };
        let mut info = match (&cont.stream, &file) {
            (Some(_), Some(f)) => stream_info(info, f),
            _ => info,
        };
        if cont.fake_quota {
            info.attributes =
                fs::attr::HIDDEN | fs::attr::SYSTEM | fs::attr::DIRECTORY | fs::attr::ARCHIVE;
            info.creation = 0;
            info.access = 0;
            info.write = 0;
            info.change = 0;
        }
        let v = cont.file_id;
        let fid = FileId {
            persistent: v,
            volatile: v,
        };
        let mut contexts = Vec::new();
        if cont.want_mxac {
            contexts.push(smb_proto::create_ctx::maximal_access_response(
                if read_only { READ_ACCESS } else { FULL_ACCESS },
            ));
        }
        if cont.want_qfid {
            contexts.push(smb_proto::create_ctx::on_disk_id_response(
                info.ino,
                self.shared.shares[cont.share].fs_id,
            ));
        }
        if let (OplockGrant::Lease(l), Some(req)) = (&grant, &cont.lease) {
            // The response takes the shape of the lease as first granted: a v2 request for a
            // key held as a v1 lease gets a v1 context back (smbtorture lease.v2_epoch3).
            let resp = LeaseContext {
                key: l.key.0,
                state: l.state.0 as u32,
                flags: if l.breaking {
                    smb_proto::messages::LEASE_FLAG_BREAK_IN_PROGRESS
                } else {
                    0
                },
                duration: 0,
                parent_key: req.parent_key,
                epoch: l.epoch,
            };
            contexts.push(smb_proto::create_ctx::lease_response(&resp));
        }
        // The lock service decided on durability with the grant (a persistent handle whatever
        // the caching, any other one with a batch oplock or a lease with handle caching) and
        // keeps the durable state (durable.rs); without its yes there is none.
        // Open.CreateGuid (MS-SMB2 3.3.5.9.10) is the request's, durable or not.
        let replay = match &cont.durable {
            Some(crate::durable::DurableKind::V2 { create_guid, .. }) => {
                Some(crate::open::ReplayRecord {
                    create_guid: *create_guid,
                    client_guid: self.client_guid_bytes(),
                    create_action: action,
                })
            }
            _ => None,
        };
        let durable = cont.durable.clone().filter(|_| durable).map(|kind| {
            contexts.push(smb_proto::create_ctx::durable_response(&kind));
            crate::durable::DurableState {
                kind,
                share_access: cont.share_access,
                lease: cont.lease,
            }
        });
        let oplock = if matches!(grant, OplockGrant::Lease(_)) && cont.lease.is_none() {
            oplock_level::NONE
        } else {
            oplock_grant_level(&grant)
        };
        self.add_open(
            v,
            Open {
                session_id: cont.session_id,
                tree_id: cont.tree_id,
                share: cont.share,
                abs: cont.abs.clone(),
                rel: cont.rel.clone(),
                stream: cont.stream.as_ref().map(|t| crate::conn::OpenStream {
                    name: t.name.clone(),
                    path: t.path.clone(),
                }),
                file,
                pin,
                is_dir: cont.is_dir,
                access: cont.access,
                share_access: cont.share_access & 0x7,
                lock_open: Some(lock_open),
                stable_id: cont.stable_id,
                dir: None,
                position: 0,
                mode: 0,
                delete_pending: cont.delete_on_close,
                grant,
                notify: None,
                resilient: false,
                durable,
                replay,
                channel_sequence: cont.channel_sequence,
                locks: Vec::new(),
                lock_seq: [0xFF; 64],
                write_time: Default::default(),
                identity: crate::identity::current(),
            },
        );
        let resp = create_response(&info, oplock, action, fid, contexts);
        (
            Outcome::Reply(status::SUCCESS, Response::Create(resp)),
            Some(fid),
        )
    }
}
/// A successful CREATE response for a file described by `info` (MS-SMB2 2.2.14).
pub(crate) fn create_response(
    info: &FileInfo,
    oplock_level: u8,
    action: u32,
    file_id: FileId,
    contexts: Vec<CreateContext>,
) -> CreateResponse {
    CreateResponse {
        oplock_level,
        flags: 0,
        action,
        creation_time: info.creation,
        last_access_time: info.access,
        last_write_time: info.write,
        change_time: info.change,
        allocation_size: info.alloc,
        end_of_file: info.size,
        attributes: info.attributes,
        file_id,
        contexts,
    }
}

/// A stream open's size and allocation come from the stream; times, attributes and the
/// file id are the base object's (MS-FSA 2.1.5.11: they are per file, not per stream).
pub(super) fn stream_info(mut info: FileInfo, f: &File) -> FileInfo {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = f.metadata() {
        info.size = m.len();
        info.alloc = m.blocks() * 512;
    }
    info.is_dir = false;
    info.attributes &= !fs::attr::DIRECTORY;
    if info.attributes == 0 {
        info.attributes = fs::attr::NORMAL;
    }
    info
}

/// A new file's LastWriteTime is its CreationTime (MS-FSA 2.1.5.1.1 sets both to the current
/// time; smbtorture smb2.timestamps.delayed-* compare the write time with the CREATE's
/// creation time): the mtime the kernel gave it becomes `now`, the creation time recorded.
fn same_times_as_creation(file: Option<&File>, now: u64) {
    let Some(f) = file else {
        return;
    };
    let (secs, nsec) = fs::unix_from_filetime(now);
    if let Err(e) = crate::sys::set_mtime(f, (secs, nsec as u32)) {
        tracing::debug!(%e, "setting a new file's write time");
    }
}
