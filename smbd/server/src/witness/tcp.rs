//! DCE/RPC over TCP (ncacn_ip_tcp): the endpoint mapper's and the witness' listeners, a
//! thread per connection driving an [`RpcPipe`].
//!
//! Connections are few (witness clients hold one each) and bounded by `max_connections`
//! (beyond it a new connection is closed at once), so blocking threads are simpler than a
//! place in the io_uring workers. A connection thread wakes every `POLL` to hand out
//! notifications that became ready and to notice shutdown; buffered output is bounded by the
//! pipe's `max_output` (a client that does not read is disconnected), input by `max_request`.
//! A connection made to a public address ends when this node releases that address
//! (`WitnessState::end_rpc_on_public`).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smb_rpc::epm::Epm;
use smb_rpc::pipe::AuthPolicy;
use smb_rpc::witness::{encode_notify_reply, Witness, WITNESS};
use smb_rpc::{CallResult, PipeConfig, RpcInterface, RpcPipe};

use super::{ConnWitness, WitnessState};

const POLL: Duration = Duration::from_millis(100);
/// A client that sends nothing for this long (and has no AsyncNotify pending) is dropped.
const IDLE: Duration = Duration::from_secs(600);

/// The two bound listeners; [`RpcListeners::spawn`] starts serving them.
pub struct RpcListeners {
    pub epm: TcpListener,
    pub witness: TcpListener,
}

impl RpcListeners {
    pub fn bind(state: &WitnessState) -> std::io::Result<Self> {
        let cfg = state.config();
        Ok(Self {
            witness: TcpListener::bind(cfg.listen)?,
            epm: TcpListener::bind(cfg.epm_listen)?,
        })
    }

    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.epm.local_addr().ok(), self.witness.local_addr().ok())
    }

    /// `auth`: what the witness' callers must prove (the endpoint mapper answers anyone, as
    /// on Windows: it only says where the witness listens).
    pub fn spawn(
        self,
        state: Arc<WitnessState>,
        shutdown: Arc<AtomicBool>,
        auth: Option<AuthPolicy>,
    ) -> std::io::Result<()> {
        let witness_port = self.witness.local_addr()?.port();
        let active = Arc::new(AtomicUsize::new(0));
        let ids = Arc::new(AtomicU64::new(1));
        for (listener, kind) in [(self.epm, Kind::Epm), (self.witness, Kind::Witness)] {
            let ctx = Ctx {
                state: state.clone(),
                shutdown: shutdown.clone(),
                active: active.clone(),
                ids: ids.clone(),
                witness_port,
                auth: auth.clone(),
            };
            listener.set_nonblocking(true)?;
            std::thread::Builder::new()
                .name(format!("smbd-{}", kind.name()))
                .spawn(move || accept_loop(listener, kind, ctx))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Epm,
    Witness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Epm => "epm",
            Kind::Witness => "witness",
        }
    }
}

#[derive(Clone)]
struct Ctx {
    state: Arc<WitnessState>,
    shutdown: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    ids: Arc<AtomicU64>,
    witness_port: u16,
    auth: Option<AuthPolicy>,
}

fn accept_loop(listener: TcpListener, kind: Kind, ctx: Ctx) {
    while !ctx.shutdown.load(Ordering::Relaxed) {
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => {
                tracing::warn!(%e, listener = kind.name(), "accept");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let max = ctx.state.config().max_connections;
        if ctx.active.fetch_add(1, Ordering::AcqRel) >= max {
            ctx.active.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(%peer, "RPC connection refused: max_connections");
            continue;
        }
        let c = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("smbd-{}-conn", kind.name()))
            .spawn(move || {
                if let Err(e) = serve(stream, kind, &c) {
                    tracing::debug!(%e, %peer, "RPC connection ended");
                }
                c.active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!(%e, "RPC connection thread");
            ctx.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve(mut stream: TcpStream, kind: Kind, ctx: &Ctx) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let conn = ctx.ids.fetch_add(1, Ordering::Relaxed);
    let local = stream.local_addr()?;
    // Known by its local address, so that releasing a public address ends it
    // (`WitnessState::end_rpc_on_public`).
    if !ctx
        .state
        .add_rpc_conn(conn, local.ip(), stream.try_clone()?)
    {
        tracing::debug!(%local, "RPC connection to a public address being released: closed");
        return Ok(());
    }
    // The tower's network floor (0x09, C706 appendix I) holds an IPv4 address only; there is
    // no IPv6 floor, so a caller that came over IPv6 gets 0.0.0.0 ("the address you used", as
    // Samba's endpoint mapper answers too) and keeps the address it reached us on.
    let local_ip = match local.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let (iface, sec_addr): (Box<dyn RpcInterface>, u16) = match kind {
        Kind::Epm => (
            Box::new(Epm {
                endpoints: vec![(WITNESS, ctx.witness_port)],
                local_ip,
            }),
            local.port(),
        ),
        Kind::Witness => (
            Box::new(Witness::new(ConnWitness {
                state: ctx.state.clone(),
                conn,
            })),
            ctx.witness_port,
        ),
    };
    let mut pipe = RpcPipe::new(
        PipeConfig {
            sec_addr: sec_addr.to_string(),
            max_frag: 5840,
            max_request: 64 * 1024,
            max_output: 256 * 1024,
            ..PipeConfig::default()
        },
        vec![iface],
    );
    if let (Kind::Witness, Some(policy)) = (kind, &ctx.auth) {
        pipe = pipe.require_auth(policy.clone());
    }
    let result = pump(&mut stream, &mut pipe, conn, ctx);
    ctx.state.drop_connection(conn);
    result
}

fn pump(stream: &mut TcpStream, pipe: &mut RpcPipe, conn: u64, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_input = Instant::now();
    loop {
        if ctx.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                last_input = Instant::now();
                pipe.write(&buf[..n])
                    .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let ready = ctx.state.take_ready(conn, now);
        let waiting = !ready.is_empty();
        for (call, outcome) in ready {
            pipe.complete(call, CallResult::Reply(encode_notify_reply(&outcome)));
        }
        while let Some(out) = pipe.read(usize::MAX) {
            stream.write_all(&out.data)?;
        }
        if !waiting && now.duration_since(last_input) > IDLE && !ctx.state.has_pending(conn) {
            return Ok(());
        }
    }
}
