//! Connections whose client has hung up but whose worker has not torn them down yet.
//!
//! A client that closes one connection and at once opens the same file on another (smbtorture
//! runs each subtest on a new connection: smb2.dir.modify leaves its directory handle open,
//! smb2.dir.sorted's first open of that directory shares no DELETE) has seen the first
//! connection end before it sent the second CREATE; the kernel has its FIN too. But the
//! first connection's opens are closed by its own worker thread (MS-SMB2 3.3.7.1), which may
//! not have run yet: on a loaded machine the second connection's worker answered
//! STATUS_SHARING_VIOLATION from the first one's leftover open. So a CREATE that meets a
//! conflict (a sharing violation, a delete-pending file) while another connection's socket
//! reports its peer gone waits for that connection's teardown and is then decided again
//! (`conn::ops::create`). The kernel's socket state is the signal, not a timer: the wait
//! ends when the worker has processed the end of the transport.
//!
//! The descriptors are the workers' sockets, polled from other threads: a worker removes its
//! connection here ([`Hangups::done`], from `Shared::unregister_conn` or the transport's loss)
//! before it closes the socket, and both that and the poll hold the one mutex, so a polled
//! number is never a reused descriptor.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct Hangups {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Connection id -> its socket, while its worker has not processed the transport's end.
    transports: HashMap<u64, RawFd>,
    /// Connection id -> connections waiting for it to be torn down.
    waiters: HashMap<u64, Vec<u64>>,
    /// Public addresses being released ([`Hangups::end_transports_to`]): a connection made to
    /// one ends as soon as it is registered.
    releasing: Vec<std::net::IpAddr>,
}

impl Hangups {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data, consistent between calls: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `conn` talks over socket `fd` (until [`Hangups::done`]). A connection made
    /// to an address being released is shut down at once: it raced the release, and its
    /// client is to reconnect to the address's next holder.
    pub fn register(&self, conn: u64, fd: RawFd) {
        let mut g = self.lock();
        g.transports.insert(conn, fd);
        if g.releasing.is_empty() {
            return;
        }
        if end_if_made_to(conn, fd, &g.releasing) {
            tracing::info!(
                conn,
                "connection to a public address being released refused"
            );
        }
    }

    /// The worker has processed the end of `conn`'s transport (its opens are closed, or live
    /// on through other channels): returns the connections that waited for that.
    pub fn done(&self, conn: u64) -> Vec<u64> {
        let mut g = self.lock();
        g.transports.remove(&conn);
        for w in g.waiters.values_mut() {
            w.retain(|c| *c != conn);
        }
        g.waiters.remove(&conn).unwrap_or_default()
    }

    /// Ends every connection whose socket's local address is `ip` (a public address this
    /// node is releasing), and every one made to it until [`Hangups::released`]: each is shut
    /// down here, under the lock that keeps its descriptor from being closed and reused
    /// meanwhile, and its worker tears it down as on a client's disconnect. Returns how many.
    pub fn end_transports_to(&self, ip: std::net::IpAddr) -> usize {
        let ip = ip.to_canonical();
        let mut g = self.lock();
        if !g.releasing.contains(&ip) {
            g.releasing.push(ip);
        }
        g.transports
            .iter()
            .filter(|(conn, fd)| end_if_made_to(**conn, **fd, &[ip]))
            .count()
    }

    /// Public address `ip` is gone from this node: no connection can be made to it any more.
    pub fn released(&self, ip: std::net::IpAddr) {
        let ip = ip.to_canonical();
        self.lock().releasing.retain(|a| *a != ip);
    }

    /// The connections other than `waiter` whose client has hung up and which are not torn
    /// down yet; `waiter` is registered to hear of each one's end ([`Hangups::done`]). Empty
    /// if there are none (the usual case: one poll(2) over the registered sockets).
    pub fn wait_for_hung_up(&self, waiter: u64) -> Vec<u64> {
        let mut g = self.lock();
        let (ids, fds): (Vec<u64>, Vec<RawFd>) = g
            .transports
            .iter()
            .filter(|(c, _)| **c != waiter)
            .map(|(c, fd)| (*c, *fd))
            .unzip();
        if ids.is_empty() {
            return Vec::new();
        }
        let gone: Vec<u64> = ids
            .into_iter()
            .zip(crate::sys::hung_up(&fds))
            .filter_map(|(c, h)| h.then_some(c))
            .collect();
        for c in &gone {
            let w = g.waiters.entry(*c).or_default();
            if !w.contains(&waiter) {
                w.push(waiter);
            }
        }
        gone
    }
}

/// Shut down connection `conn`'s socket `fd` if its local address is one of `addrs`;
/// whether it was. The caller holds the lock that keeps `fd` open.
fn end_if_made_to(conn: u64, fd: RawFd, addrs: &[std::net::IpAddr]) -> bool {
    if !crate::sys::socket_local_ip(fd).is_some_and(|ip| addrs.contains(&ip)) {
        return false;
    }
    match crate::sys::shutdown_raw_socket(fd) {
        Ok(()) => true,
        // Already gone (the client left first): its worker is on it.
        Err(e) => {
            tracing::debug!(conn, %e, "shutdown of a connection to a released address");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn only_hung_up_connections_are_waited_for_until_done() {
        let h = Hangups::default();
        let (a, a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        h.register(1, a.as_raw_fd());
        h.register(2, b.as_raw_fd());
        assert!(h.wait_for_hung_up(3).is_empty());
        drop(a_peer);
        assert_eq!(h.wait_for_hung_up(3), vec![1]);
        // A connection does not wait for itself.
        assert!(h.wait_for_hung_up(1).is_empty());
        assert_eq!(h.done(1), vec![3]);
        assert!(h.wait_for_hung_up(3).is_empty());
        assert!(h.done(2).is_empty());
    }

    /// A TCP connection to 127.0.0.1 as (the client's end, the server's end).
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    /// Whether the client's end reads the end of the stream (the server shut it down).
    fn ended(client: &mut std::net::TcpStream) -> bool {
        use std::io::Read;
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        matches!(client.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn releasing_an_address_ends_its_connections_and_refuses_new_ones_until_released() {
        let h = Hangups::default();
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let (mut c1, s1) = tcp_pair();
        let (_unix, unix_peer) = UnixStream::pair().unwrap();
        h.register(1, s1.as_raw_fd());
        h.register(2, unix_peer.as_raw_fd());
        // Another address: nothing ends.
        assert_eq!(h.end_transports_to("10.9.9.9".parse().unwrap()), 0);
        h.released("10.9.9.9".parse().unwrap());
        assert_eq!(h.end_transports_to(loopback), 1);
        assert!(
            ended(&mut c1),
            "the connection to the released address ended"
        );
        // One that raced the release ends as soon as it is registered.
        let (mut c2, s2) = tcp_pair();
        h.register(3, s2.as_raw_fd());
        assert!(ended(&mut c2), "a connection made during the release ended");
        // Once the address is gone, registering ends nothing.
        h.released(loopback);
        let (mut c3, s3) = tcp_pair();
        h.register(4, s3.as_raw_fd());
        c3.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        use std::io::Read;
        assert!(c3.read(&mut [0u8; 1]).is_err(), "still open: timed out");
    }
}
