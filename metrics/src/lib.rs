//! Metrics for lockmgrd and smbd: counters, gauges and fixed-bucket histograms that cost a
//! relaxed atomic add on the hot path, written out in the Prometheus text exposition format
//! 0.0.4 ([`text`]), and a minimal, bounded HTTP/1.1 `GET /metrics` endpoint on its own
//! thread ([`http`]).
//!
//! Dependency-free on purpose (besides thiserror/tracing): the daemons need a handful of
//! metric kinds and a scrape endpoint, not a metrics framework with registries and macros.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod http;
pub mod metric;
pub mod text;

pub use http::{
    check_listen, check_request, parse_request, serve, HttpError, ListenError, ServeLimits,
};
pub use metric::{Counter, Gauge, Histogram, HistogramSnapshot, LATENCY_BUCKETS};
pub use text::{Exposition, Kind};
