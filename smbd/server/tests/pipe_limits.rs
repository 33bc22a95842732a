//! The bounds on named pipes, driven in-process through the `smbd_conn` harness (an anonymous
//! session with IPC$): pipes per connection, and unread RPC answers per pipe.

#[path = "../fuzz/conn_harness.rs"]
mod conn_harness;

use conn_harness::{
    body_close, body_create, body_tree_connect, body_write, cmd, rpc_bind_srvsvc, rpc_share_enum,
    run, Seq, FIRST_FID, TREE_ID,
};

const SUCCESS: u32 = 0;
const INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;
const PIPE_BUSY: u32 = 0xC000_00AE;

fn on_ipc() -> Seq {
    let mut s = Seq::new();
    s.login(&[0x0311]);
    s.push(cmd::TREE_CONNECT, body_tree_connect("\\\\fuzz\\IPC$"));
    s.tid = TREE_ID + 1;
    s
}

fn status_of(answers: &[(u16, u64, u32)], mid: u64) -> u32 {
    answers
        .iter()
        .find(|a| a.1 == mid)
        .unwrap_or_else(|| panic!("no answer to {mid}: {answers:x?}"))
        .2
}

#[test]
fn a_connection_holds_at_most_32_pipes() {
    let mut s = on_ipc();
    let opens: Vec<u64> = (0..33)
        .map(|_| s.push(cmd::CREATE, body_create("srvsvc", 1, 0)))
        .collect();
    // Closing one makes room for one more.
    let first = (FIRST_FID, FIRST_FID);
    let close = s.push(cmd::CLOSE, body_close(first));
    let again = s.push(cmd::CREATE, body_create("SRVSVC", 1, 0));
    let answers = run(&s.input()).unwrap();
    for mid in &opens[..32] {
        assert_eq!(status_of(&answers, *mid), SUCCESS, "{answers:x?}");
    }
    assert_eq!(status_of(&answers, opens[32]), INSUFFICIENT_RESOURCES);
    assert_eq!(status_of(&answers, close), SUCCESS);
    assert_eq!(status_of(&answers, again), SUCCESS);
}

#[test]
fn a_pipe_refuses_writes_while_64k_of_answers_are_unread() {
    let mut s = on_ipc();
    s.push(cmd::CREATE, body_create("srvsvc", 1, 0));
    let pipe = (FIRST_FID, FIRST_FID);
    s.push(cmd::WRITE, body_write(pipe, 0, &rpc_bind_srvsvc()));
    // Each WRITE carries 100 NetrShareEnum calls, a few KiB of requests for tens of KiB of
    // answers that nobody reads.
    let batch: Vec<u8> = (0..100).flat_map(|i| rpc_share_enum(10 + i)).collect();
    let writes: Vec<u64> = (0..8)
        .map(|_| s.push(cmd::WRITE, body_write(pipe, 0, &batch)))
        .collect();
    let answers = run(&s.input()).unwrap();
    let statuses: Vec<u32> = writes.iter().map(|m| status_of(&answers, *m)).collect();
    let accepted = statuses.iter().take_while(|st| **st == SUCCESS).count();
    assert!(accepted >= 1, "{statuses:x?}");
    assert!(
        statuses[accepted..].iter().all(|st| *st == PIPE_BUSY) && accepted < writes.len(),
        "{statuses:x?}"
    );
}
