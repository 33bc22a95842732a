//! SMB2/SMB3 file server on io_uring
