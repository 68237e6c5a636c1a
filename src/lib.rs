//! stretcher: a pull-based deployment agent.
//!
//! The flow of one run (SPEC §5), each step owned by one module:
//!
//! ```text
//! argv ─cli::parse→ Options                 stdin, env ─event::read→ Event
//! Event.url ─fetch (text)→ manifest::parse(text, base_url) → Manifest
//!   (--trusted-key: Event.url.minisig ─fetch→ signature::verify(raw bytes) first;
//!   then expires / serial against the last success's record)
//! Manifest.src ─fetch::stream (hashing as bytes arrive)→ unpack → Verified<Staged>
//!   (one pass, two threads; the `Unchanged` probe, `sync::DestProbe`, reads dest:
//!   unchanged files are left out, or hard-linked from the live release)
//! hooks::run(pre) → sync::plan_staged(&Verified<Staged>, dest) → Plan
//!   → sync::apply (renames from staging) | sync::move_into_place | release switch
//! hooks::run(post) → hooks::run_with_input(success | failure, the saved log on stdin)
//! ```
//!
//! Only `deploy` knows that order; only `unpack` writes staging, only `sync` and
//! `release` write `dest`, only `hooks` starts processes, only `fetch` reads sources.
//! ARCHITECTURE.md at the repository root is the map of every module.
//!
//! # Public API
//!
//! Public are only the modules something outside the library needs: the binary's
//! commands (`cli`, `commands::run`, `deploy::main`, `status::main`, `fleet::main`,
//! `drift::main`, `catch_up::main`), and what `tests/`, `benches/` and `fuzz/` drive directly
//! (`unpack`, `sync`, `filter`, `verify`, `index`, `entry`, `record`, `manifest`,
//! `event`, `rollout`, `signature`, `log`, `serf_rpc` (against real agents), the type
//! `strategy::Strategy` and `fleet::answer_table`), with [`Error`], [`Result`], [`Env`]
//! and [`VERSION`].
//! Everything else is crate-private (`pub(crate)` or private), and so are the items
//! of the public modules that nothing outside the crate uses.

#![warn(missing_docs)]

mod allow;
pub mod at;
mod bucket_url;
pub mod catch_up;
pub mod cli;
pub mod commands;
mod delta;
pub mod deploy;
pub(crate) mod detach;
pub mod digest;
pub mod drift;
pub mod entry;
pub(crate) mod error;
pub mod event;
pub(crate) mod fetch;
pub mod filter;
pub mod fleet;
pub(crate) mod fsops;
pub(crate) mod gcs;
pub(crate) mod hooks;
pub(crate) mod http;
pub mod index;
pub(crate) mod interrupt;
mod land;
pub mod log;
pub mod manifest;
pub(crate) mod metrics;
pub mod pack;
pub mod process;
pub mod record;
pub(crate) mod redeploy;
pub(crate) mod release;
pub mod rollout;
pub(crate) mod s3;
pub mod serf_rpc;
pub mod signature;
mod staging;
pub(crate) mod state;
pub mod status;
pub mod strategy;
pub mod sync;
pub mod toc;
pub mod unpack;
mod urls;
pub mod verify;
pub mod waves;

pub use error::{Error, Result};

/// An environment lookup: the process environment (`|k| std::env::var(k).ok()`) read
/// only at the entry points (`deploy::main`, `status::main`, ...), a table in tests.
/// Every module below them is handed one and never reads `std::env` itself.
pub type Env<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// The version of this build (`stretcher --version`, the HTTP `User-Agent`, the
/// deploy record's `stretcher_version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
