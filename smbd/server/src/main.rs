//! `smbd --config FILE [--listen ADDR:PORT ...]`: the SMB2/3 file server.
//! `smbd passwd --users FILE [--uid N --gid N] [--groups G,..] [--delete] USER`: manage users.
//! `smbd witness --socket PATH drain|undrain|status|ips|connections|share-move SHARE TARGET...`:
//! drain a node for the witness service, list the nodes, the public addresses and their
//! holders, the connections a takeover would tickle; tell the witness clients registered for
//! a share where it moved.
//!
//! The configuration format is documented in [`smbd::config`]; see `smbd/smbd.example.toml`.
//! Prints `smbd listening on ADDR` for each bound address (port 0 picks a free port).
//! SIGINT/SIGTERM stop the server cleanly. A panic in any thread is logged and aborts the
//! process (exit by SIGABRT): a worker that died silently would leave its connections hung
//! and their lock state held, while a dead process is restarted by its supervisor and, in a
//! cluster, lockmgrd releases the node's locks when its session drops.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use smbd::config::Config;
use smbd::passwd::{update_users_file, PasswdAction};
use smbd::server::Server;

#[derive(Parser, Debug)]
#[command(
    name = "smbd",
    about = "SMB2/SMB3 file server",
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable), in addition to the configured ones.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Add a user, set its password or Unix ids, or delete it, in the users file. The file
    /// keeps NT hashes, never passwords, and is written with mode 0600.
    Passwd(PasswdArgs),
    /// Talk to a running smbd's witness control socket (`[witness] control_socket`):
    /// `drain` (its witness clients are told to move to the other nodes, on every node, and
    /// its public addresses move to them), `undrain`, `status`, `ips` (public addresses:
    /// address, holder, assigned node), `connections` (per public address: who published
    /// its client connections, how many, the clients), `share-move SHARE NODE|ADDRESS...`
    /// (SHARE_MOVE to this node's witness clients registered with RegisterEx for SHARE, naming
    /// the nodes or addresses that serve it now; run it on every node).
    Witness(WitnessArgs),
    /// This node's sessions (user, client, dialect, signing, encryption), open files (share,
    /// path, access, share mode, oplock/lease) and byte-range locks, like smbstatus, from a
    /// running smbd's `[server] status_socket` (`lockmgrctl status` is the cluster's view).
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The status socket (`[server] status_socket`).
    #[arg(long)]
    socket: PathBuf,
}

#[derive(clap::Args, Debug)]
struct WitnessArgs {
    /// The control socket.
    #[arg(long)]
    socket: PathBuf,
    /// drain | undrain | status | ips | connections | share-move SHARE NODE|ADDRESS...
    #[arg(required = true, num_args = 1..)]
    command: Vec<String>,
}

fn status(args: StatusArgs) -> std::process::ExitCode {
    // The same one-line protocol as the witness control socket.
    match smbd::witness::peers::control_request(&args.socket, "status") {
        Ok(text) if !text.starts_with("error:") => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Ok(text) => {
            eprint!("smbd status: {text}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("smbd status: {}: {e}", args.socket.display());
            std::process::ExitCode::FAILURE
        }
    }
}

fn witness(args: WitnessArgs) -> std::process::ExitCode {
    match smbd::witness::peers::control_request(&args.socket, &args.command.join(" ")) {
        Ok(answer) => {
            print!("{answer}");
            if answer.starts_with("error") {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("smbd witness: {}: {e}", args.socket.display());
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args, Debug)]
struct PasswdArgs {
    /// The users file (`[server] users` in the configuration).
    #[arg(long)]
    users: PathBuf,
    /// Unix uid the user's file operations run as (default: what the file has, else NSS).
    #[arg(long)]
    uid: Option<u32>,
    /// Unix primary gid (with --uid).
    #[arg(long)]
    gid: Option<u32>,
    /// Supplementary gids, comma separated.
    #[arg(long, value_delimiter = ',')]
    groups: Option<Vec<u32>>,
    /// Remove the user.
    #[arg(long, conflicts_with_all = ["uid", "gid", "groups", "password_stdin"])]
    delete: bool,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// The SMB user name.
    user: String,
}

fn read_password(args: &PasswdArgs) -> Result<String, String> {
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password(format!("New SMB password for {}: ", args.user))
        .map_err(|e| format!("reading the password (use --password-stdin without a tty): {e}"))?;
    let again = rpassword::prompt_password("Retype it: ")
        .map_err(|e| format!("reading the password: {e}"))?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

fn passwd(args: PasswdArgs) -> std::process::ExitCode {
    let action = if args.delete {
        PasswdAction::Delete
    } else {
        match read_password(&args) {
            Ok(password) => PasswdAction::Set {
                password,
                uid: args.uid,
                gid: args.gid,
                groups: args.groups.clone(),
            },
            Err(e) => {
                eprintln!("smbd passwd: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    };
    match update_users_file(&args.users, &args.user, action) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smbd passwd: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), %info, "panic; aborting smbd");
        default_hook(info);
        std::process::abort();
    }));
    let args = Args::parse();
    match args.command {
        Some(Command::Passwd(p)) => return passwd(p),
        Some(Command::Witness(w)) => return witness(w),
        Some(Command::Status(s)) => return status(s),
        None => {}
    }
    let Some(config_path) = args.config else {
        eprintln!("smbd: --config FILE is required (or a subcommand: smbd passwd --help)");
        return std::process::ExitCode::from(2);
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%e, "configuration");
            return std::process::ExitCode::from(2);
        }
    };
    // Block the signals before any thread exists so only the waiter below receives them.
    if let Err(e) = smbd::sys::block_shutdown_signals() {
        tracing::error!(%e, "signal setup");
        return std::process::ExitCode::FAILURE;
    }
    let server = match Server::bind(config, &args.listen) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%e, "startup");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One write: a reader that takes only the first line (the tests) never makes a later
    // print fail on a closed pipe.
    let mut banner = String::new();
    for a in server.local_addrs() {
        banner.push_str(&format!("smbd listening on {a}\n"));
    }
    if let Some(m) = server.metrics_addr() {
        banner.push_str(&format!("smbd metrics on {m}\n"));
    }
    if let Some((epm, witness)) = server.witness_addrs() {
        banner.push_str(&format!(
            "smbd endpoint mapper on {epm}, witness on {witness}\n"
        ));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if out
            .write_all(banner.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            tracing::debug!("stdout closed");
        }
    }
    let stopper = server.stopper();
    std::thread::spawn(move || {
        let sig = smbd::sys::wait_shutdown_signal();
        tracing::info!(sig, "signal received, shutting down");
        stopper.stop();
    });
    match server.run() {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(%e, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}
