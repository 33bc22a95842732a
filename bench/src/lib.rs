//! Latency benchmark harness for lockmgr and smbd
