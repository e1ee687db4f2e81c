mod config;
mod policy;
fn main() {}
