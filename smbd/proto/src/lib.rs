//! SMB2/SMB3 message codec, no I/O
