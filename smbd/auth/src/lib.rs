//! SMB authentication and crypto: SPNEGO/NTLMv2, signing, encryption, key derivation
