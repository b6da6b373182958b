//! The few system calls that need `unsafe`, each behind a safe function. Every block
//! carries a `// SAFETY:` comment.

pub mod cuda;
pub mod dm;
pub mod net;
pub mod process;
