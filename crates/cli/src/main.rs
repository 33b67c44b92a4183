//! sluicectl: placeholder.
fn main() {}
