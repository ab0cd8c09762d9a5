//! Remote execution over SSH (ssh2, blocking, driven from tokio) and the
//! host recipe that converges one host to its plan.
