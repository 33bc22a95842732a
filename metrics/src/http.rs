//! A minimal HTTP/1.1 server for `GET /metrics` (RFC 9112), bounded in every direction: a
//! request (line and headers) larger than [`ServeLimits::max_request`] is refused with 431, a
//! client that has not sent a whole request within [`ServeLimits::timeout`] is dropped, and at
//! most [`ServeLimits::max_connections`] are served at once (others get 503 at once). Every
//! response closes the connection. It runs on threads of its own, never on a daemon's I/O
//! workers; the render callback reads atomics or a snapshot, so a scrape never blocks them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::text::CONTENT_TYPE;

/// Why a request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request line and headers exceed {0} bytes")]
    TooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
}

/// Why the endpoint could not be started.
#[derive(Debug, Error)]
pub enum ListenError {
    #[error("metrics_listen {0} is not a loopback address; metrics are unauthenticated, so a non-loopback address needs metrics_allow_remote = true")]
    NotLoopback(SocketAddr),
    #[error("cannot bind metrics endpoint {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the metrics thread: {0}")]
    Thread(std::io::Error),
}

/// The request line of a complete request.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// The request target without its query string.
    pub path: &'a str,
}

/// Parses the request head in `buf`: `Ok(None)` while it is incomplete (no empty line yet)
/// and shorter than `max`. Header fields are checked for shape (RFC 9112 5: `name:` with no
/// whitespace before the colon) but not interpreted: there is no body to read, and the
/// connection closes after the response.
pub fn parse_request(buf: &[u8], max: usize) -> Result<Option<RequestLine<'_>>, HttpError> {
    let end = find_head_end(buf);
    let Some(end) = end else {
        return if buf.len() >= max {
            Err(HttpError::TooLarge(max))
        } else {
            Ok(None)
        };
    };
    if end > max {
        return Err(HttpError::TooLarge(max));
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(HttpError::Malformed("empty"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::Malformed("request target"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(HttpError::Version),
        _ => return Err(HttpError::Malformed("version")),
    }
    for field in lines.filter(|l| !l.is_empty()) {
        let Some((name, _value)) = field.split_once(':') else {
            return Err(HttpError::Malformed("header field"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b < 0x21) {
            return Err(HttpError::Malformed("header name"));
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Some(RequestLine { method, path }))
}

/// The index just past the empty line ending the head (`\r\n\r\n`, or bare `\n\n`, which
/// RFC 9112 2.2 allows a recipient to accept).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1..) {
                Some([b'\n', ..]) => return Some(i + 2),
                Some([b'\r', b'\n', ..]) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Bounds of the endpoint.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub max_request: usize,
    pub timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_request: 8192,
            timeout: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}

/// Checks the configured address: loopback, or anything with `allow_remote`.
pub fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), ListenError> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(ListenError::NotLoopback(addr))
    }
}

/// The render callback: the whole scrape as text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` (after [`check_listen`]) and serves `GET /metrics` from `render` on a thread
/// of its own until the process exits. Returns the bound address (port 0 picks one).
pub fn serve(
    addr: SocketAddr,
    allow_remote: bool,
    limits: ServeLimits,
    render: Render,
) -> Result<SocketAddr, ListenError> {
    check_listen(addr, allow_remote)?;
    let listener = TcpListener::bind(addr).map_err(|source| ListenError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError::Bind { addr, source })?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || accept_loop(listener, limits, render, active))
        .map_err(ListenError::Thread)?;
    tracing::info!(%bound, "metrics endpoint listening (GET /metrics)");
    Ok(bound)
}

fn accept_loop(
    listener: TcpListener,
    limits: ServeLimits,
    render: Render,
    active: Arc<AtomicUsize>,
) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            // EMFILE and the like: back off rather than spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                b"busy\n",
                false,
            );
            continue;
        }
        let render = render.clone();
        let active2 = active.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                handle(stream, limits, &render);
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn handle(mut stream: TcpStream, limits: ServeLimits, render: &Render) {
    let deadline = Instant::now() + limits.timeout;
    let _ = stream.set_write_timeout(Some(limits.timeout));
    let mut buf = vec![0u8; limits.max_request];
    let mut len = 0;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        match parse_request(&buf[..len], limits.max_request) {
            Ok(None) => continue,
            other => break other,
        }
    };
    let _ = match outcome {
        Ok(Some(req)) => match (req.method, req.path) {
            ("GET" | "HEAD", "/metrics") => {
                let body = render();
                respond(
                    &mut stream,
                    "200 OK",
                    CONTENT_TYPE,
                    body.as_bytes(),
                    req.method == "HEAD",
                )
            }
            ("GET" | "HEAD", _) => respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                false,
            ),
            _ => respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"GET only\n",
                false,
            ),
        },
        Ok(None) => return,
        Err(HttpError::TooLarge(_)) => respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            b"too large\n",
            false,
        ),
        Err(HttpError::Version) => respond(
            &mut stream,
            "505 HTTP Version Not Supported",
            "text/plain",
            b"HTTP/1.x only\n",
            false,
        ),
        Err(HttpError::Malformed(_)) => respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
            false,
        ),
    };
    lingering_close(&mut stream);
}

/// Closes our side, then reads (bounded in bytes and time) what the client may still be
/// sending, so that closing with unread data does not reset the connection before the client
/// has read the response (RFC 9112 9.6).
fn lingering_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < 65536 {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" }
    );
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// The fuzz target's property (also replayed over the checked-in corpus by `cargo test`):
/// parsing never panics; a parsed request has a path starting with `/` without a query; a
/// head found within `max` is found the same with any larger bound, and every prefix of an
/// input parses to "incomplete" or to an error, never to a different request.
pub fn check_request(data: &[u8]) -> Result<(), String> {
    let max = 8192;
    let whole = parse_request(data, max);
    if let Ok(Some(r)) = &whole {
        if !r.path.starts_with('/') || r.path.contains('?') {
            return Err(format!("bad path {:?}", r.path));
        }
        if parse_request(data, max * 2) != whole {
            return Err("result depends on the bound".into());
        }
    }
    if let Some(end) = find_head_end(data) {
        for cut in 0..end.min(data.len()) {
            if let Ok(Some(r)) = parse_request(&data[..cut], max) {
                return Err(format!(
                    "prefix {cut} parsed as {r:?} before the head ended"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_requests_only() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", 100),
            Ok(None)
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 100),
            Ok(Some(RequestLine {
                method: "GET",
                path: "/metrics"
            }))
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.0\n\n", 100),
            Ok(Some(RequestLine {
                method: "GET",
                path: "/"
            }))
        );
        assert_eq!(
            parse_request(&[b'a'; 100], 100),
            Err(HttpError::TooLarge(100))
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/2\r\n\r\n", 100),
            Err(HttpError::Version)
        );
        assert!(matches!(
            parse_request(b"GET metrics HTTP/1.1\r\n\r\n", 100),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"GET /m HTTP/1.1\r\nBad Header: x\r\n\r\n", 100),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"GET /m HTTP/1.1\r\nnocolon\r\n\r\n", 100),
            Err(HttpError::Malformed(_))
        ));
    }

    fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_404_and_bounds() {
        let limits = ServeLimits {
            max_request: 256,
            ..Default::default()
        };
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            false,
            limits,
            Arc::new(|| "m 1\n".to_string()),
        )
        .unwrap();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        assert!(get(addr, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(get(addr, &[b'G'; 300]).starts_with("HTTP/1.1 431 "));
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\nx y: z\r\n\r\n").starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn non_loopback_needs_allow_remote() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            check_listen(any, false),
            Err(ListenError::NotLoopback(_))
        ));
        assert!(check_listen(any, true).is_ok());
        assert!(check_listen("[::1]:9100".parse().unwrap(), false).is_ok());
        assert!(matches!(
            serve(any, false, ServeLimits::default(), Arc::new(String::new)),
            Err(ListenError::NotLoopback(_))
        ));
    }
}
