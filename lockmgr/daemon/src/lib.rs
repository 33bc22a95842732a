//! lockmgrd: the cluster lock manager daemon
