//! Sentry continuous profiling: chunks, envelopes, upload. OWNER: sentry helper.
