//! Types shared by the firewall-ctl XDP program and its user space.
//!
//! Everything here is `#![no_std]` and `#[repr(C)]` where it crosses the
//! kernel boundary: map keys and values, counter indices and verdict reasons.
//! [`verdict::decide`] is the one place that turns a parsed packet into a
//! verdict; the XDP program calls it with lookups backed by BPF maps, and
//! [`model`] calls it with a plain, obviously correct rule list so tests can
//! check the compiled maps against it.
#![no_std]

pub mod diagnostics;
pub mod flow;
pub mod limits;
pub mod maps;
pub mod model;
pub mod reasons;
pub mod verdict;
pub mod wire;
