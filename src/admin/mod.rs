//! The admin side: Prometheus metrics and the admin listener's endpoints.

pub mod health;
pub mod metrics;
pub mod throttle;
