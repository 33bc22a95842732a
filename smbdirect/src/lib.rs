//! SMB Direct (MS-SMBD) proxy daemon
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
