//! lockmgr client library for smbd: non-blocking requests, completions and breaks as events
