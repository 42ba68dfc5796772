//! Integration tests of the `lockbench` binary. One test binary; one module per area.

mod cluster;
mod smoke;
