//! `firewall-ctl`: the daemon that enforces a source allowlist for exposed
//! ports in XDP, and the CLI that talks to it. `main.rs` parses the
//! command line and hands it to [`cli::run`]; everything else is here, one
//! module per concern, from the wire types ([`api`]) up.

pub mod cli;

mod api;
mod check;
mod client;
mod config;
mod daemon;
mod datapath;
mod detach;
mod entries;
mod feeds;
mod fsutil;
mod manual;
mod output;
mod policy;
mod system;
mod text;
mod usage;
