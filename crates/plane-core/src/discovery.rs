//! Discovery: find the instances that serve an endpoint (placeholder until implemented).
