//! Request intake: message framing, compound chains, MessageId/credit accounting
//! (MS-SMB2 3.3.5.2) and dispatch of each command to its handler.

use smb_proto::NtStatus;
use std::time::Instant;

use smb_auth::preauth::PreauthHash;
use smb_proto::header::flags;
use smb_proto::{dialect, status, Command, Header, Request, Response, Writer};

use crate::seqwin::SeqHandle;

use super::state::{err, AuthState, ChainCtx, Outcome, Signer};
use super::Conn;

impl Conn {
    /// Handle one complete NetBIOS session message payload that arrived at `now`.
    pub fn on_message(&mut self, msg: &[u8], now: Instant) {
        self.now = now;
        if let Some(dir) = &self.shared.dump_dir {
            // Debug aid (SMBD_DUMP_DIR): keep received messages, e.g. as a fuzzing corpus.
            let n = self.next_async + self.next_volatile + msg.len() as u64;
            let _ = std::fs::write(
                dir.join(format!("c{}-{}-{}", self.id, n, rand::random::<u32>())),
                msg,
            );
        }
        if msg.len() < 4 {
            self.closed = true;
            return;
        }
        match &msg[..4] {
            [0xFF, b'S', b'M', b'B'] => self.smb1_negotiate(msg),
            [0xFD, b'S', b'M', b'B'] => {
                if !self.forward_to_owner(msg) {
                    self.encrypted_message(msg)
                }
            }
            [0xFE, b'S', b'M', b'B'] => {
                if !self.forward_to_owner(msg) {
                    self.process_chain(msg, None)
                }
            }
            _ => {
                tracing::debug!(conn = self.id, "not an SMB message; disconnecting");
                self.closed = true;
            }
        }
        if self.rdma_area.is_some() {
            self.release_unused_grants(msg);
        }
    }

    /// `sealed`: the SessionId of the TRANSFORM_HEADER the chain was decrypted from.
    pub(super) fn process_chain(&mut self, buf: &[u8], sealed: Option<u64>) {
        let msgs = match smb_proto::split_compound(buf) {
            // Borrowed: a large WRITE is not copied again before it is decoded.
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(conn = self.id, %e, "bad compound; disconnecting");
                self.closed = true;
                return;
            }
        };
        let max = self.shared.config.limits.max_compound;
        if msgs.len() > max {
            // No client chains this many requests; answering each would cost memory in
            // proportion to what an attacker sends, so the connection is dropped.
            tracing::warn!(conn = self.id, peer = ?self.peer, requests = msgs.len(), max, "compound over [limits] max_compound; disconnecting");
            self.closed = true;
            return;
        }
        let ctx = ChainCtx {
            encrypted: sealed.is_some(),
            sealed_session: sealed.unwrap_or(0),
            // A request forwarded from a bound channel is answered synchronously: ring
            // completions go out on this connection's own socket.
            single: msgs.len() == 1 && self.cur_channel.is_none(),
            seq: self.cur_seq.clone(),
            ..Default::default()
        };
        self.run_chain(msgs, 0, ctx);
    }

    /// Process `msgs` (the requests of a compound from index `first` on) and emit the
    /// responses as one chain.
    pub(crate) fn run_chain<M: AsRef<[u8]> + Into<Vec<u8>>>(
        &mut self,
        msgs: Vec<M>,
        first: usize,
        ctx: ChainCtx,
    ) {
        // The rest of a compound resumed after an async CREATE still spends MessageIds of the
        // connection the compound arrived on (a bound channel's, not this one's).
        let outer = self.cur_seq.clone();
        if ctx.seq.is_some() {
            self.cur_seq = ctx.seq.clone();
        }
        self.run_chain_inner(msgs, first, ctx);
        self.cur_seq = outer;
    }

    pub(super) fn run_chain_inner<M: AsRef<[u8]> + Into<Vec<u8>>>(
        &mut self,
        msgs: Vec<M>,
        first: usize,
        mut ctx: ChainCtx,
    ) {
        let mut responses: Vec<(Vec<u8>, Option<Signer>)> = Vec::new();
        let mut enc_session: Option<u64> = None;
        let n = first + msgs.len();
        let mut it = msgs.into_iter();
        let mut i = first;
        let mut spent = 0usize;
        while let Some(m) = it.next() {
            ctx.index = i;
            ctx.response_bytes = spent;
            let one = self.process_one(m.as_ref(), &mut ctx, i + 1 == n);
            i += 1;
            if self.closed {
                // A protocol violation (e.g. a replayed MessageId): nothing more of this
                // compound is processed or answered.
                return;
            }
            let Some((resp, signer)) = one else {
                continue;
            };
            let (hdr_sid, hdr_cmd) = Header::decode(&resp)
                .map(|h| (h.session_id, h.command))
                .unwrap_or((0, 0));
            // The final SESSION_SETUP response goes out signed, not sealed (MS-SMB2 3.3.5.5.3).
            let setup =
                hdr_cmd == Command::SessionSetup as u16 || hdr_cmd == Command::Negotiate as u16;
            if ctx.encrypted || (!setup && self.session_wants_encryption(hdr_sid, ctx.tree_id)) {
                enc_session = enc_session.or(Some(hdr_sid));
            }
            // Samba pads a READ response in a compound to 8 bytes even when it is the last
            // one (smbtorture compound-padding); a lone READ stays unpadded.
            let mut resp = resp;
            if n > 1 && hdr_cmd == Command::Read as u16 {
                while resp.len() % 8 != 0 {
                    resp.push(0);
                }
            }
            spent += resp.len();
            responses.push((resp, signer));
            if self.closed {
                return;
            }
            if let Some(aid) = self.suspend_chain.take() {
                let rest: Vec<Vec<u8>> = it.by_ref().map(Into::into).collect();
                if let Some(p) = self.pending.get_mut(&aid) {
                    p.rest = Some((rest, ctx.clone()));
                }
                break;
            }
        }
        if responses.is_empty() {
            return;
        }
        // Chain: 8-byte align every response but the last, set NextCommand, then sign each.
        let count = responses.len();
        let mut chain = Vec::new();
        // The commands answered, for the request metrics once the chain is queued.
        let mut commands: Vec<u16> = Vec::with_capacity(count);
        for (i, (mut r, signer)) in responses.into_iter().enumerate() {
            // MS-SMB2 2.2.1.2: Command at offset 12 of the header.
            commands.push(
                r.get(12..14)
                    .map_or(u16::MAX, |c| u16::from_le_bytes([c[0], c[1]])),
            );
            if i + 1 < count {
                while r.len() % 8 != 0 {
                    r.push(0);
                }
                let next = r.len() as u32;
                smb_proto::header::set_next_command(&mut r, next);
            }
            if let Some((alg, key)) = signer {
                if enc_session.is_none() {
                    smb_proto::header::mark_signed(&mut r);
                    if let Err(e) = smb_auth::signing::sign(alg, &key, &mut r) {
                        tracing::warn!(conn = self.id, %e, "signing failed");
                    }
                }
            }
            chain.extend_from_slice(&r);
        }
        self.emit(chain, enc_session);
        self.parting_encryption = None;
        let took = self.now.elapsed();
        for c in commands {
            self.shared.metrics.request_done(c, took);
        }
        for sid in std::mem::take(&mut self.expire_after) {
            let same_user = self.sessions.get(&sid).map(|s| s.user.to_lowercase());
            let new_user = self
                .sessions
                .get(&ctx.session_id)
                .map(|s| s.user.to_lowercase());
            if same_user.is_some() && same_user == new_user {
                self.park_durable_opens(Some(sid));
                self.close_session_opens(sid, None);
                self.sessions.remove(&sid);
                self.shared.session_gone(sid);
                self.end_channels(sid);
            }
        }
    }

    /// The interim STATUS_PENDING response of a request that went async (MS-SMB2 3.3.4.2).
    fn interim_response(req: &Header, credits: u16, async_id: u64) -> Vec<u8> {
        let mut h = Self::response_header(req, status::PENDING, credits);
        h.flags |= flags::ASYNC_COMMAND;
        h.async_id = async_id;
        let mut w = Writer::new();
        h.encode(&mut w);
        Response::Error { data: vec![] }.encode_body(&mut w, 0);
        w.buf
    }

    pub(super) fn response_header(req: &Header, st: NtStatus, credits: u16) -> Header {
        Header {
            credit_charge: req.credit_charge,
            status: st,
            command: req.command,
            credits,
            flags: flags::SERVER_TO_REDIR | (req.flags & flags::RELATED_OPERATIONS),
            next_command: 0,
            message_id: req.message_id,
            process_id: req.process_id,
            tree_id: req.tree_id,
            async_id: 0,
            session_id: req.session_id,
            signature: [0; 16],
        }
    }

    /// The CommandSequenceWindow of the connection the current request arrived on.
    pub(super) fn window(&self) -> SeqHandle {
        self.cur_seq.clone().unwrap_or_else(|| self.seq.clone())
    }

    /// MS-SMB2 3.3.5.2.3: the request's MessageId (with multi-credit, its CreditCharge
    /// consecutive ids) must be in the window and unused; then it leaves the window. A replayed,
    /// reused or not yet granted MessageId drops the connection (<258>: Windows and Samba do),
    /// so a captured signed request cannot be played again.
    pub(super) fn consume_message_id(&mut self, hdr: &Header) -> bool {
        // 3.3.1.1 / 3.3.5.2.5: Connection.SupportsMultiCredit (2.1 and later); at 2.0.2 every
        // request takes one id whatever its CreditCharge says.
        let charge = if self.dialect() > dialect::SMB202 && self.dialect() != dialect::WILDCARD {
            hdr.credit_charge
        } else {
            1
        };
        let r = self.window().lock().consume(hdr.message_id, charge);
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    conn = self.id,
                    channel = ?self.cur_channel,
                    mid = hdr.message_id,
                    charge,
                    command = hdr.command,
                    error = ?e,
                    "MessageId outside the command sequence window; disconnecting"
                );
                self.closed = true;
                false
            }
        }
    }

    /// Credit accounting (MS-SMB2 3.3.1.2): grant what the client asks for while it holds at
    /// most [`crate::seqwin::MAX_CREDITS`] (see [`crate::seqwin::SeqWindow::grant`]); the granted ids join
    /// the window of the connection the request arrived on.
    pub(super) fn grant_credits(&mut self, req: &Header) -> u16 {
        self.window().lock().grant(req.credits)
    }

    /// Process one message of a chain; returns the response bytes and how to sign them.
    pub(super) fn process_one(
        &mut self,
        m: &[u8],
        ctx: &mut ChainCtx,
        last: bool,
    ) -> Option<(Vec<u8>, Option<Signer>)> {
        let mut hdr = match Header::decode(m) {
            Ok(h) => h,
            Err(_) => {
                self.closed = true;
                return None;
            }
        };
        // MS-SMB2 3.3.5.2.3: CANCEL takes no MessageId of its own (it names the request it
        // cancels); every other request consumes its ids before anything else is looked at.
        if hdr.command != Command::Cancel as u16 && !self.consume_message_id(&hdr) {
            return None;
        }
        let related = hdr.flags & flags::RELATED_OPERATIONS != 0;
        ctx.related = related;
        if related {
            // MS-SMB2 3.3.5.2.7.2: related requests inherit session, tree and file of the
            // previous request (whatever their header says, as Windows and Samba do).
            hdr.session_id = ctx.last_session_id;
            hdr.tree_id = ctx.last_tree_id;
        } else {
            ctx.file_id = None;
            if ctx.encrypted && hdr.session_id != ctx.sealed_session {
                // MS-SMB2 3.3.5.2.1.1: a decrypted request names the session whose key sealed
                // it. Otherwise the key of one session would carry requests of another, and
                // since sealed requests skip signature checks they would run unauthenticated.
                tracing::warn!(
                    conn = self.id,
                    sealed = ctx.sealed_session,
                    inner = hdr.session_id,
                    "sealed request names another session; disconnecting"
                );
                self.closed = true;
                return None;
            }
        }
        let signed = hdr.flags & flags::SIGNED != 0;
        self.signed_request = signed;
        self.override_signer = None;
        let cmd = Command::from_u16(hdr.command);
        ctx.session_id = hdr.session_id;
        ctx.tree_id = hdr.tree_id;
        let outcome = match cmd {
            None => err(status::INVALID_PARAMETER),
            Some(cmd) => {
                if related && ctx.index == 0 {
                    // A chain cannot start with a related request (MS-SMB2 3.3.5.2.7.2).
                    ctx.file_id = None;
                    err(status::INVALID_PARAMETER)
                } else if related
                    && cmd != Command::Negotiate
                    && !self.sessions.contains_key(&hdr.session_id)
                {
                    // The session the request inherits is not valid (Samba: a chained
                    // request with a bad session fails with INVALID_PARAMETER).
                    err(status::INVALID_PARAMETER)
                } else {
                    self.checked_dispatch(cmd, &hdr, m, ctx, last)
                }
            }
        };
        ctx.last_session_id = if self.sessions.contains_key(&ctx.session_id) {
            ctx.session_id
        } else {
            0
        };
        let tree_ok = self
            .sessions
            .get(&ctx.session_id)
            .is_some_and(|s| s.trees.contains_key(&ctx.tree_id));
        if matches!(outcome, Outcome::Nothing) {
            // No response (CANCEL, or a dropped connection): no credits either, since the
            // client would never learn of them.
            return None;
        }
        let credits = self.grant_credits(&hdr);
        let (st, body) = match outcome {
            Outcome::Nothing => return None,
            Outcome::Pending(async_id) if !last && cmd == Some(Command::Create) => {
                // MS-SMB2 <206>: a CREATE waiting for an oplock break may go async in the
                // middle of a compound; the rest of the chain waits for it.
                ctx.last_tree_id = if tree_ok { ctx.tree_id } else { 0 };
                self.suspend_chain = Some(async_id);
                ctx.prev_status = status::SUCCESS;
                return Some((Self::interim_response(&hdr, credits, async_id), None));
            }
            Outcome::Pending(async_id) if !last => {
                // Like Windows and Samba, a request in the middle of a compound cannot go
                // async: it fails and the chain goes on (MS-SMB2 <159>, <162>).
                self.cancel_pending(async_id, status::INTERNAL_ERROR);
                self.pending.remove(&async_id);
                ctx.prev_status = status::INTERNAL_ERROR;
                (status::INTERNAL_ERROR, Response::Error { data: vec![] })
            }
            Outcome::Pending(async_id) => {
                ctx.prev_status = status::SUCCESS;
                return Some((Self::interim_response(&hdr, credits, async_id), None));
            }
            Outcome::Reply(st, body) => (st, body),
            Outcome::Deferred(mut io) => {
                ctx.prev_status = status::SUCCESS;
                ctx.last_tree_id = if tree_ok { ctx.tree_id } else { 0 };
                io.hdr = Self::response_header(&hdr, status::SUCCESS, credits);
                io.signer = self.signer_for(hdr.session_id, signed);
                io.enc = (ctx.encrypted
                    || self.session_wants_encryption(hdr.session_id, ctx.tree_id))
                .then_some(hdr.session_id);
                self.file_io.push(*io);
                return None;
            }
        };
        ctx.prev_status = st;
        if st != status::SUCCESS {
            tracing::debug!(
                conn = self.id,
                channel = ?self.cur_channel,
                ?cmd,
                mid = hdr.message_id,
                status = format_args!("{st:#010x}"),
                "error response"
            );
        }
        if cmd == Some(Command::Create) && st != status::SUCCESS {
            ctx.file_id = None;
            ctx.create_err = Some(st);
        }
        let mut h = Self::response_header(&hdr, st, credits);
        if cmd == Some(Command::SessionSetup) {
            h.session_id = ctx.session_id;
        }
        if let Some(tid) = self.pending_tree_id.take() {
            h.tree_id = tid;
            ctx.tree_id = tid;
        }
        ctx.last_tree_id = if tree_ok
            || self
                .sessions
                .get(&ctx.session_id)
                .is_some_and(|s| s.trees.contains_key(&ctx.tree_id))
        {
            ctx.tree_id
        } else {
            0
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        body.encode_body(&mut w, 0);
        let signer = match cmd {
            Some(Command::SessionSetup) => self.session_setup_signer(&h, st),
            Some(Command::Negotiate) => None,
            Some(Command::Logoff) if self.override_signer.is_some() => self.override_signer.clone(),
            _ => {
                if st == status::USER_SESSION_DELETED {
                    // A session of another connection that is not bound here: the client
                    // signed with the session's key and wants the refusal signed too (Samba
                    // signs with the session's main channel key). Unknown sessions cannot be.
                    match (signed, self.neg.as_ref()) {
                        (true, Some(_)) if self.unbound.contains_key(&h.session_id) => {
                            self.unbound.get(&h.session_id).cloned()
                        }
                        (true, Some(n)) => self
                            .shared
                            .session_record(h.session_id)
                            .map(|rec| (n.signing_alg, rec.signing_key)),
                        _ => None,
                    }
                } else {
                    self.signer_for(h.session_id, signed)
                }
            }
        };
        let mut resp = w.buf;
        let mut signer = signer;
        if cmd == Some(Command::SessionSetup)
            && st == status::MORE_PROCESSING_REQUIRED
            && self.binding.contains_key(&h.session_id)
        {
            // The channel's preauth hash covers the interim response as sent, signature
            // included (Samba hashes after signing): sign it here.
            if let Some((alg, key)) = signer.take() {
                smb_proto::header::mark_signed(&mut resp);
                if let Err(e) = smb_auth::signing::sign(alg, &key, &mut resp) {
                    tracing::warn!(conn = self.id, %e, "signing failed");
                }
            }
        }
        if cmd == Some(Command::Negotiate)
            && st == status::SUCCESS
            && self.dialect() == dialect::SMB311
        {
            // MS-SMB2 3.3.5.4: hash the NEGOTIATE request and response.
            self.conn_preauth = PreauthHash::new();
            self.conn_preauth.update(m);
            self.conn_preauth.update(&resp);
        }
        if cmd == Some(Command::SessionSetup) && st == status::MORE_PROCESSING_REQUIRED {
            if let Some(b) = self.binding.get_mut(&h.session_id) {
                if self
                    .neg
                    .as_ref()
                    .is_some_and(|n| n.dialect == dialect::SMB311)
                {
                    b.preauth.update(&resp);
                }
            } else if let Some(s) = self.sessions.get_mut(&h.session_id) {
                if self
                    .neg
                    .as_ref()
                    .is_some_and(|n| n.dialect == dialect::SMB311)
                {
                    s.preauth.update(&resp);
                }
            }
        }
        Some((resp, signer))
    }

    pub(super) fn checked_dispatch(
        &mut self,
        cmd: Command,
        hdr: &Header,
        m: &[u8],
        ctx: &mut ChainCtx,
        last: bool,
    ) -> Outcome {
        if cmd != Command::Negotiate && self.neg.is_none() {
            self.closed = true;
            return Outcome::Nothing;
        }
        if cmd == Command::Cancel && !self.cancel_allowed(hdr, ctx, m) {
            // CANCEL has no response, not even an error (MS-SMB2 3.3.5.16).
            return Outcome::Nothing;
        }
        // Session checks (MS-SMB2 3.3.5.2.9) for everything but NEGOTIATE/SESSION_SETUP/ECHO/CANCEL
        // and the one IOCTL that only changes how this connection is treated (as in Samba,
        // which takes it without session, tree or file).
        let sessionless = cmd == Command::Ioctl && Self::is_channel_test_ioctl(m);
        if !sessionless
            && !matches!(
                cmd,
                Command::Negotiate | Command::SessionSetup | Command::Echo | Command::Cancel
            )
        {
            let Some(s) = self.sessions.get(&hdr.session_id) else {
                return err(status::USER_SESSION_DELETED);
            };
            if !matches!(s.state, AuthState::Valid) {
                return err(status::USER_SESSION_DELETED);
            }
            // A message forwarded from a bound connection may only use a session that
            // connection is bound to (MS-SMB2 3.3.5.2.9: the connection must be in the
            // session's ChannelList); another session of this connection is not its business.
            if let Some(ch) = self.cur_channel {
                if !self.channels.contains_key(&(ch, hdr.session_id)) {
                    return err(status::USER_SESSION_DELETED);
                }
            }
            let signed = hdr.flags & flags::SIGNED != 0;
            if !ctx.encrypted {
                if s.encrypt && s.keys.as_ref().is_some_and(|k| !k.decryption.is_empty()) {
                    return err(status::ACCESS_DENIED);
                }
                if signed {
                    if let Some((alg, key)) = self.signing_pair(hdr.session_id) {
                        if !smb_auth::signing::verify(alg, &key, m) {
                            tracing::debug!(conn = self.id, "bad signature");
                            return err(status::ACCESS_DENIED);
                        }
                    }
                } else if s.signing_required && !s.anonymous {
                    return err(status::ACCESS_DENIED);
                }
            }
            if !matches!(
                cmd,
                Command::Logoff | Command::TreeConnect | Command::OplockBreak
            ) {
                let Some(t) = s.trees.get(&hdr.tree_id) else {
                    return err(status::NETWORK_NAME_DELETED);
                };
                if t.encrypt
                    && !ctx.encrypted
                    && s.keys.as_ref().is_some_and(|k| !k.decryption.is_empty())
                {
                    return err(status::ACCESS_DENIED);
                }
            }
        }
        // Everything the request does to the share runs with the session user's credentials
        // (crate::identity). READ, WRITE, LOCK and FLUSH only use descriptors opened (and
        // permission-checked) as the user, so they skip the switch: it costs ~10 us when a
        // worker alternates between users (measured; two credential commits).
        let fd_only = matches!(
            cmd,
            Command::Read | Command::Write | Command::Lock | Command::Flush
        );
        if let Some(id) = self
            .sessions
            .get(&hdr.session_id)
            .and_then(|s| s.identity.as_ref())
            .filter(|_| !fd_only)
        {
            crate::identity::become_user(id);
        }
        let req = match Request::decode_body(cmd, m) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(conn = self.id, ?cmd, %e, "malformed request");
                return err(status::INVALID_PARAMETER);
            }
        };
        if !self.credit_charge_covers(hdr, &req) {
            return err(status::INVALID_PARAMETER);
        }
        self.dispatch(req, hdr, m, ctx, last)
    }

    /// An IOCTL of FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT (CtlCode at body offset 4).
    fn is_channel_test_ioctl(m: &[u8]) -> bool {
        m.get(64 + 4..64 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(super::ops::FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT)
    }

    /// MS-SMB2 3.3.5.2.5: with multi-credit, a request's CreditCharge must cover the larger
    /// of what it sends and what it may receive, one credit per 64 KiB (a client must not move
    /// 8 MiB for the price of one credit); without it no payload may exceed 64 KiB.
    pub(super) fn credit_charge_covers(&self, hdr: &Header, req: &Request) -> bool {
        let payload: u64 = match req {
            Request::Read(r) => r.length.into(),
            Request::Write(w) => w.data.len() as u64,
            Request::Ioctl(i) => (i.input.len() as u64)
                .max(i.max_input_response.into())
                .max(i.max_output_response.into()),
            Request::QueryDirectory(q) => q.output_buffer_length.into(),
            Request::ChangeNotify(c) => c.output_buffer_length.into(),
            Request::QueryInfo(q) => (q.input.len() as u64).max(q.output_buffer_length.into()),
            Request::SetInfo(s) => s.buffer.len() as u64,
            _ => return true,
        };
        let d = self.dialect();
        let multi_credit = d > dialect::SMB202 && d != dialect::WILDCARD;
        if !multi_credit {
            // 2.0.2: the handlers refuse sizes above their (64 KiB) limits themselves.
            return true;
        }
        let needed = payload.saturating_sub(1) / 65536 + 1;
        let charge = u64::from(hdr.credit_charge.max(1));
        if needed > charge {
            tracing::debug!(
                conn = self.id,
                mid = hdr.message_id,
                payload,
                charge = hdr.credit_charge,
                "CreditCharge too small for the payload"
            );
            return false;
        }
        true
    }

    pub(super) fn dispatch(
        &mut self,
        req: Request,
        hdr: &Header,
        m: &[u8],
        ctx: &mut ChainCtx,
        last: bool,
    ) -> Outcome {
        if let Some(st) = self.request_limit(&req, hdr, ctx) {
            return err(st);
        }
        let req = match self.pipe_request(req, ctx) {
            Ok(out) => return out,
            Err(req) => req,
        };
        if let Err(st) = self.on_handle_request(&req, hdr, ctx) {
            return err(st);
        }
        match req {
            Request::Negotiate(n) => self.negotiate(n),
            Request::SessionSetup(s) => self.session_setup(s, hdr, ctx, m),
            Request::Logoff => self.logoff(hdr),
            Request::TreeConnect(t) => self.tree_connect(&t.path, hdr),
            Request::TreeDisconnect => self.tree_disconnect(hdr),
            Request::Echo => Outcome::Reply(status::SUCCESS, Response::Echo),
            Request::Cancel => self.cancel(hdr),
            Request::Create(c) => self.create(c, hdr, ctx),
            Request::Close(c) => self.close(c, hdr, ctx),
            Request::Flush { file_id } => self.flush(file_id, ctx),
            Request::Read(r) => self.read(r, hdr, ctx),
            Request::Write(w) => self.write(w, hdr, ctx),
            Request::Lock(l) => self.lock(l, hdr, ctx),
            Request::Ioctl(i) => self.ioctl(i, hdr, ctx),
            Request::QueryDirectory(q) => self.query_directory(q, ctx),
            Request::ChangeNotify(c) => self.change_notify(c, hdr, ctx, last),
            Request::QueryInfo(q) => self.query_info(q, ctx),
            Request::SetInfo(s) => self.set_info(s, hdr, ctx),
            Request::OplockBreak(a) => self.break_ack(a, ctx),
        }
    }

    // ---- NEGOTIATE ---------------------------------------------------------------------
}
