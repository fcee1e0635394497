//! Forwarding permitted requests upstream: pooled clients, header hygiene, and
//! streaming bodies both ways.

pub mod body;
pub mod client;
pub mod forward;
pub mod headers;
pub mod places;
pub mod pool;
pub mod request_id;
pub mod tunnel;

use bytes::Bytes;
use http_body_util::{Either, Full};

/// Response bodies: streamed from an upstream, or a small one scopegate made.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

pub use body::UpstreamBody;
pub use forward::Forwarder;
pub use headers::ClientInfo;
