//! SMB Direct (MS-SMBD) proxy daemon
