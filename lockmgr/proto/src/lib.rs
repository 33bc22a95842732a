//! lockmgr wire protocol: versioned little-endian frames, batching, session authentication
