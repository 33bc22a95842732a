//! Hardware tests: soft-RoCE under qemu
