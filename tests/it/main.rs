//! One integration-test binary: real sockets, real processes, temp directories.

mod api;
mod attacks;
mod backup;
mod cli;
mod cluster;
mod dashboard;
mod deploy;
mod durability;
mod layout;
mod metrics;
mod security;
mod sim;
mod storage;
mod support;
mod watch;
