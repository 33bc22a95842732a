//! The RDMA side channel's liveness check. Epoll, the eventfd waker and the spin loop come from
//! the plumbing shared with every transport ([`lockmgr_transport::sys`]).

use std::io;

/// Reads the non-blocking TCP side channel: `true` while the peer is alive. After the hello
/// nothing is sent on it, so any data is a protocol violation and treated as death.
pub(crate) fn sock_alive(sock: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 16];
    match (&*sock).read(&mut b) {
        Ok(0) => false,
        Ok(_) => {
            tracing::warn!("unexpected data on the RDMA side channel");
            false
        }
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            true
        }
        Err(_) => false,
    }
}
