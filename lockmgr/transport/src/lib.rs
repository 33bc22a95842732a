//! lockmgr transports: shared-memory rings, UDP, raw Ethernet, RDMA
