//! sluice: placeholder.
fn main() {}
