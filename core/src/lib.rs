//! The broker-neutral messaging contract of polybridge.

pub mod topic;
