//! Samba's `rpcclient` driven interactively (its witness commands), shared by the witness
//! and public address tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// rpcclient in interactive mode: commands on stdin, output lines through a channel.
pub struct Rpcclient {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Rpcclient {
    /// Start `cmd` (an rpcclient command line with its binding) with its standard streams
    /// piped.
    pub fn spawn(mut cmd: Command) -> Rpcclient {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rpcclient");
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Rpcclient {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The first line (from now on) containing `needle`; panics with everything seen after
    /// `limit` (a bound against a hung test, not a timing assertion).
    pub fn expect(&mut self, needle: &str, limit: Duration) -> String {
        self.expect_by(needle, limit, |l| l.contains(needle))
    }

    pub fn expect_by(&mut self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if ok(&l) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "no {what:?} from rpcclient; output:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// Register (or RegisterEx) sent: the context handle it printed.
    pub fn handle(&mut self, limit: Duration) -> String {
        let line = self.expect_by("a context handle", limit, |l| handle_token(l).is_some());
        handle_of(&line)
    }
}

impl Drop for Rpcclient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The handle rpcclient printed after Register: `0:<uuid>`.
pub fn handle_token(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find(|t| t.starts_with("0:") && t.len() == 38)
}

pub fn handle_of(line: &str) -> String {
    handle_token(line).unwrap().to_string()
}
