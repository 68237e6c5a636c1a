//! Integration tests: the real binary and the library against real files, real
//! processes and real `rsync` as the oracle. One file per topic.

mod util;

mod cli;
mod deploy;
mod events;
mod faults;
mod fleet;
mod hooks;
mod http;
mod record;
mod redeploy;
mod releases;
mod rsync_oracle;
mod s3;
mod safety;
#[cfg(feature = "e2e")]
mod serf_e2e;
mod unpack;
