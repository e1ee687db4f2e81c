//! Empty: the program is the `firewall` binary in `main.rs`. This library
//! exists so `firewall-ctl` can name the crate as a build dependency.
#![no_std]
