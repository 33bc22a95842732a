//! The lock-manager calls the guest tests make as a node, with errors as text.

use std::time::Duration;

use lockmgr_client::LockClient;
use lockmgr_engine::{access, share, FileId, OpenId, OpenRequest, Reply, Request};
use lockmgr_transport::ClientTransport;

/// One request and its reply within `timeout`.
pub fn call<T: ClientTransport>(
    c: &mut LockClient<T>,
    req: Request,
    timeout: Duration,
) -> Result<Reply, String> {
    c.call(req, timeout).map_err(|e| format!("call: {e}"))
}

/// Opens `file` for reading and writing, sharing both (the byte-range lock tests' open).
pub fn open_read_write<T: ClientTransport>(
    c: &mut LockClient<T>,
    file: FileId,
    timeout: Duration,
) -> Result<OpenId, String> {
    match call(
        c,
        Request::Open(OpenRequest {
            file,
            access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
            share: share::READ | share::WRITE,
            ..OpenRequest::default()
        }),
        timeout,
    )? {
        Reply::Opened { open, .. } => Ok(open),
        other => Err(format!("open failed: {other:?}")),
    }
}
