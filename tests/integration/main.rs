//! Integration tests: the real binary and the library against real files, real
//! processes and real `rsync` as the oracle. One file per topic.

mod util;

mod archives_corpus;
mod cli;
mod content;
mod delta;
mod deploy;
mod detach;
mod events;
mod faults;
mod fleet;
mod gcs;
mod hooks;
mod hostile;
mod hostile_local;
mod http;
#[cfg(feature = "e2e")]
mod metrics_e2e;
mod pack;
mod proxy;
mod record;
mod redeploy;
mod releases;
mod rsync_oracle;
mod s3;
mod safety;
#[cfg(feature = "e2e")]
mod serf_e2e;
#[cfg(feature = "e2e")]
mod serf_e2e_catchup;
#[cfg(feature = "e2e")]
mod serf_e2e_detach;
#[cfg(feature = "e2e")]
mod serf_e2e_events;
#[cfg(feature = "e2e")]
mod serf_e2e_fleet;
#[cfg(feature = "e2e")]
mod serf_e2e_rollout;
mod signing;
#[cfg(feature = "static")]
mod static_bin;
mod status;
mod unpack;
mod waves;
