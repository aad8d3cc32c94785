//! Where profiles go.

pub mod sentry;
