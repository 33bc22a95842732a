//! The property of the `smbd_config` fuzz target, also compiled into `tests/fuzz_corpus.rs`
//! (via `#[path]`) so `cargo test` replays the corpus through exactly the same check. It lives
//! here rather than in the library to keep `src/` untouched: it only calls public API.

use smbd::config::Config;

/// Parses `data` as an smbd config; never panics. An accepted config must parse the same way
/// again and hold only share names the tree-connect path can serve (non-empty, no separators,
/// not the built-in `IPC$`); `cluster_fs_id()` must not panic. `Err` is a violated property.
pub fn check_config(data: &[u8]) -> Result<bool, String> {
    // `Config::load` refuses non-UTF-8 files before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(false);
    };
    let Ok(cfg) = Config::parse(text) else {
        return Ok(false);
    };
    for s in &cfg.share {
        if s.name.is_empty() || s.name.contains(['\\', '/']) || s.name.eq_ignore_ascii_case("IPC$")
        {
            return Err(format!("accepted share name {:?}", s.name));
        }
        // Parse validated the DFS links: asking again must not fail.
        s.dfs_links()
            .map_err(|e| format!("accepted share {:?} with bad DFS links: {e}", s.name))?;
    }
    let _ = cfg.cluster_fs_id();
    let again = Config::parse(text).map_err(|e| format!("second parse failed: {e}"))?;
    if format!("{again:?}") != format!("{cfg:?}") {
        return Err("second parse differs".into());
    }
    Ok(true)
}
