//! The lock manager's configuration in etcd: which lockmgrd is primary, which are standbys,
//! and the epoch that numbers that assignment.
//!
//! This is the only place the cluster agrees on anything by consensus, and the consensus is
//! etcd's (Raft), not ours. The lock path never comes here: a configuration changes only when
//! a replica dies or joins, by a compare-and-swap ([`Coordinator::swap`]) that installs epoch
//! `e + 1` only if the stored configuration is still the one read at epoch `e`. Two replicas
//! racing to replace the same configuration (a standby promoting itself, a primary going on
//! alone) cannot both win, which is what makes the replication protocol's epoch fencing safe
//! (see `lockmgr-replica`).
//!
//! The configuration is stored as a few lines of text (see [`Configuration::encode`]) under
//! `/clustersmb/<cluster>/lockmgr/config`, so `etcdctl get` shows it to an operator.
//!
//! lockmgrd is single-threaded and synchronous; the etcd client is async (tonic/gRPC), so a
//! [`Coordinator`] owns a current-thread tokio runtime and blocks on each call. Calls are
//! rare (start, failover, standby replacement) and each has a deadline.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

mod local;

pub use local::{LocalEtcd, LocalEtcdError};
pub use lockmgr_replica::{ConfigError, Configuration, Member, MAX_STANDBYS};

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, WatchOptions,
};

/// Errors talking to the coordination service. Not exhaustive: match with a fallback arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot start the client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("stored configuration is malformed: {0}")]
    Malformed(#[from] ConfigError),
    #[error("a configuration change must raise the epoch by one ({from} -> {to})")]
    EpochNotNext { from: u64, to: u64 },
}

/// A configuration as read, with the etcd revision it was last changed at (what
/// [`Coordinator::swap`] compares against).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub config: Configuration,
    pub mod_revision: i64,
}

/// The result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The new configuration is installed.
    Installed(Stored),
    /// Someone changed the configuration first: this is what is stored now.
    Lost(Option<Stored>),
}

/// A blocking client of the coordination service for one cluster.
pub struct Coordinator {
    runtime: tokio::runtime::Runtime,
    client: Client,
    key: String,
    deadline: Duration,
}

impl Coordinator {
    /// Connects to etcd (`endpoints` like `http://127.0.0.1:2379`) for `cluster`. Every
    /// call, this one included, gives up after `deadline`.
    pub fn connect(
        endpoints: &[String],
        cluster: &str,
        deadline: Duration,
    ) -> Result<Coordinator, CoordError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CoordError::Runtime)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(deadline)
            .with_timeout(deadline);
        let client = runtime
            .block_on(async {
                tokio::time::timeout(deadline, Client::connect(endpoints, Some(options))).await
            })
            .map_err(|_| CoordError::Timeout(deadline))??;
        Ok(Coordinator {
            runtime,
            client,
            key: format!("/clustersmb/{cluster}/lockmgr/config"),
            deadline,
        })
    }

    /// The etcd key the configuration lives under.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn block<T>(
        &mut self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CoordError> {
        let deadline = self.deadline;
        self.runtime
            .block_on(async { tokio::time::timeout(deadline, f).await })
            .map_err(|_| CoordError::Timeout(deadline))?
            .map_err(CoordError::Etcd)
    }

    /// The stored configuration, if one was ever installed.
    pub fn read(&mut self) -> Result<Option<Stored>, CoordError> {
        let key = self.key.clone();
        let mut kv = self.client.kv_client();
        let resp = self.block(async move { kv.get(key, None).await })?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Stored {
                config: Configuration::decode(kv.value())?,
                mod_revision: kv.mod_revision(),
            })),
        }
    }

    /// Installs `first` if the cluster has no configuration yet; returns what is stored
    /// afterwards (`first`, or the configuration someone else installed before).
    pub fn bootstrap(&mut self, first: &Configuration) -> Result<Stored, CoordError> {
        let key = self.key.clone();
        let value = first.encode();
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            // A key that never existed has create_revision 0.
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        self.block(async move { kv.txn(txn).await })?;
        self.read()?.ok_or_else(|| {
            CoordError::Malformed(ConfigError::Invalid(
                "configuration vanished after bootstrap",
            ))
        })
    }

    /// Compare-and-swap: installs `next` if the stored configuration is still `current`
    /// (same etcd revision). `next.epoch` must be `current.config.epoch + 1`.
    pub fn swap(&mut self, current: &Stored, next: &Configuration) -> Result<Swap, CoordError> {
        next.validate()?;
        if current.config.epoch.checked_add(1) != Some(next.epoch) {
            return Err(CoordError::EpochNotNext {
                from: current.config.epoch,
                to: next.epoch,
            });
        }
        let key = self.key.clone();
        let value = next.encode();
        let revision = current.mod_revision;
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        match self.block(async move { kv.txn(txn).await }) {
            Ok(resp) if resp.succeeded() => {
                let mod_revision = resp.header().map_or(revision + 1, |h| h.revision());
                Ok(Swap::Installed(Stored {
                    config: next.clone(),
                    mod_revision,
                }))
            }
            Ok(_) => Ok(Swap::Lost(self.read()?)),
            Err(e) => {
                // The transaction may have committed although the answer was lost (timeout,
                // connection reset): what is stored now decides. Epochs only grow and each
                // is installed once, so finding `next` means this swap installed it.
                tracing::warn!(%e, "etcd swap failed; reading back the configuration");
                match self.read()? {
                    Some(now) if now.config == *next => Ok(Swap::Installed(now)),
                    Some(now) if now.mod_revision == revision => Err(e),
                    other => Ok(Swap::Lost(other)),
                }
            }
        }
    }

    /// Moves the cluster from `my_epoch` to `next` (`my_epoch + 1`): reads the stored
    /// configuration and swaps only if it is still at `my_epoch`. A replica passes the epoch
    /// it is in, never one it merely read, so a replica that missed a change cannot undo it.
    ///
    /// Finding `next` itself stored means an earlier attempt of this same change committed
    /// although its answer was lost (etcd went away between commit and reply, and the read
    /// back failed too): the change is ours, installed. Records are canonical and every epoch
    /// is installed once, so no other replica can have stored an equal record.
    pub fn advance(&mut self, my_epoch: u64, next: &Configuration) -> Result<Swap, CoordError> {
        match self.read()? {
            Some(current) if current.config.epoch == my_epoch => self.swap(&current, next),
            Some(current) if current.config == *next => Ok(Swap::Installed(current)),
            other => Ok(Swap::Lost(other)),
        }
    }

    /// [`Coordinator::advance`] in one etcd round trip, for a caller that knows the
    /// configuration of its epoch (`current`): the transaction compares the stored record
    /// with `current`'s. Records are canonical ([`Configuration::decode`] refuses anything
    /// `encode` would not write) and every epoch is installed once, so an equal record is the
    /// same configuration at the same epoch. A failover waits for this call, and each round
    /// trip to etcd is a quorum read or a write. When the record differs, `advance` decides.
    pub fn advance_from(
        &mut self,
        current: &Configuration,
        next: &Configuration,
    ) -> Result<Swap, CoordError> {
        next.validate()?;
        if current.epoch.checked_add(1) != Some(next.epoch) {
            return Err(CoordError::EpochNotNext {
                from: current.epoch,
                to: next.epoch,
            });
        }
        let key = self.key.clone();
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                current.encode(),
            )])
            .and_then([TxnOp::put(key, next.encode(), None)]);
        match self.block(async move { kv.txn(txn).await }) {
            Ok(resp) if resp.succeeded() => match resp.header() {
                Some(h) => Ok(Swap::Installed(Stored {
                    config: next.clone(),
                    mod_revision: h.revision(),
                })),
                // No revision to report: read it (the record is ours, epochs only grow).
                None => match self.read()? {
                    Some(now) if now.config == *next => Ok(Swap::Installed(now)),
                    other => Ok(Swap::Lost(other)),
                },
            },
            Ok(_) => self.advance(current.epoch, next),
            Err(e) => {
                // As in `swap`: the transaction may have committed although the answer was
                // lost; what is stored now decides.
                tracing::warn!(%e, "etcd swap failed; reading back the configuration");
                match self.read()? {
                    Some(now) if now.config == *next => Ok(Swap::Installed(now)),
                    Some(now) if now.config == *current => Err(e),
                    other => Ok(Swap::Lost(other)),
                }
            }
        }
    }

    /// Waits (up to `timeout`) for the configuration to change after `seen` (the etcd
    /// revision of the configuration the caller holds) and returns the configuration stored
    /// now, or `None` if it did not change in time. Watch events only wake the wait: the
    /// answer is always a fresh read, so several changes at once, or a compacted history,
    /// still give the latest configuration.
    pub fn wait_change(
        &mut self,
        seen: i64,
        timeout: Duration,
    ) -> Result<Option<Stored>, CoordError> {
        if let Some(now) = self.read()? {
            if now.mod_revision > seen {
                return Ok(Some(now));
            }
        }
        let key = self.key.clone();
        let mut watch = self.client.watch_client();
        self.runtime.block_on(async move {
            let options = WatchOptions::new().with_start_revision(seen + 1);
            let mut stream = watch.watch(key, Some(options)).await?;
            let wait = async {
                while let Some(resp) = stream.message().await? {
                    if resp.canceled()
                        || resp
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Put)
                    {
                        break;
                    }
                }
                Ok::<_, etcd_client::Error>(())
            };
            // A timeout is an answer ("no change"), not an error.
            let _ = tokio::time::timeout(timeout, wait).await;
            Ok::<_, etcd_client::Error>(())
        })?;
        match self.read()? {
            Some(now) if now.mod_revision > seen => Ok(Some(now)),
            _ => Ok(None),
        }
    }
}
