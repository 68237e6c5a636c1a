//! Command line → a validated `Command` (SPEC §3, §10).
//!
//! One job: turn argv into a `Command` — the deploy (`Command::Run(Options)`), a
//! subcommand with its checked options, `--help` or `--version` — and define what a
//! command hands back to print, `Output`.
//!
//! Every command is parsed by the one mechanism of `parse_as`: each command's flags are
//! the fields of one argh struct (`RawArgs`, `RawStatus`, `RawVerify`, `RawReleases`, `RawPack`,
//! `RawRollback`, `RawFleet`), and the `Raw` trait adds what argh does not know (the
//! command's words, aliases, its texts). Go-style `-flag`, `--flag`, `-flag=value` and
//! `-flag value` are first rewritten into the one form argh understands (`--flag
//! value`) by a normaliser whose flag lists (`Flags`) are read from argh's own
//! description of that struct (`ArgsInfo`), so a flag is declared once; then argh does
//! the parsing and `Raw::into_command` the checking.
//!
//! It must never exit the process, print, or touch the environment: bad usage is
//! returned as `Error::Usage` (exit 2) and `main` decides what to do with it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use argh::{ArgsInfo, FlagInfoKind, FromArgs};

use crate::allow::AllowList;
use crate::error::{Error, Result};
use crate::signature::TrustedKey;
use crate::VERSION;

/// Validated run options (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Download rate cap in bytes per second; `None` = unlimited (`0` means that too).
    pub max_bandwidth: Option<u64>,
    /// Whole-download deadline, retries included; `None` = no deadline (`0`).
    pub timeout: Option<Duration>,
    /// `--stall-timeout`: a download attempt that receives no byte for this long
    /// fails (and is retried); default 60s, `None` = no limit (`0`) (SPEC §17).
    pub stall_timeout: Option<Duration>,
    /// Upper bound of the random sleep before anything else; `None` = no sleep.
    pub random_delay: Option<Duration>,
    /// Extra download attempts after a failure.
    pub retry: u32,
    /// Pause between download attempts (default 3s).
    pub retry_wait: Duration,
    /// `""` → 0, `-v` → 1 (default), `-vv` → 2, `-vvv` → 3.
    pub rsync_verbose: u8,
    /// The positional manifest URL or local path, if given.
    pub target: Option<String>,
    /// `--state-dir`: where replay state lives; `None` = the default (SPEC §2).
    pub state_dir: Option<PathBuf>,
    /// `--allow-url` prefixes (normalised); empty = every URL is allowed.
    pub allow_url: AllowList,
    /// `--dry-run`: fetch, verify and unpack, print what would change; change nothing,
    /// run no command.
    pub dry_run: bool,
    /// `--command-timeout`: how long one hook command may run before its process
    /// group is killed and the deploy fails; `None` = no limit (`0`).
    pub command_timeout: Option<Duration>,
    /// `--textfile-dir`: where node_exporter textfile metrics are written after each
    /// deploy (SPEC §13); `None` = none are written.
    pub textfile_dir: Option<PathBuf>,
    /// `--trusted-key`s: when any, every manifest must be signed by one (SPEC §15).
    pub trusted_keys: Vec<TrustedKey>,
    /// `--force`: deploy even when `dest` already holds the archive (SPEC §11).
    pub force: bool,
    /// `--detach` (SPEC §13): hand the deploy to a detached process and return at
    /// once. Holds that process's arguments: this command line, normalised, without
    /// `--detach`.
    pub detach: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bandwidth: None,
            timeout: None,
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
            random_delay: None,
            retry: 0,
            retry_wait: DEFAULT_RETRY_WAIT,
            rsync_verbose: 1,
            target: None,
            state_dir: None,
            allow_url: AllowList::default(),
            dry_run: false,
            command_timeout: None,
            textfile_dir: None,
            trusted_keys: Vec::new(),
            force: false,
            detach: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A deploy (no subcommand), with its checked options.
    Run(Options),
    /// `-v`, `--version`: print the version and exit.
    Version,
    /// `-h`, `--help`: print the help and exit.
    Help,
    /// `stretcher status` (SPEC §13).
    Status(StatusOptions),
    /// `stretcher fleet status` (SPEC §13).
    FleetStatus(FleetOptions),
    /// `--help` of a subcommand: the text to print (exit 0).
    SubcommandHelp(String),
    /// `stretcher verify DEST` (SPEC §12).
    Verify(VerifyOptions),
    /// `stretcher releases DEST` (SPEC §14).
    Releases(ReleasesOptions),
    /// `stretcher rollback DEST [--to ID]` (SPEC §14).
    Rollback(RollbackOptions),
    /// `stretcher rollout MANIFEST_URL` (SPEC §19).
    Rollout(RolloutOptions),
    /// `stretcher pack DIR -o OUT` (SPEC §18).
    Pack(PackOptions),
    /// `stretcher catch-up` (SPEC §20).
    CatchUp(CatchUpOptions),
}

/// What a command hands back to print: `main` writes it once (stderr, then stdout)
/// and exits with its status. Commands never print themselves (but for the deploy's
/// log, and `fleet status`'s progress line on a terminal while it waits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// What goes to stdout.
    pub stdout: String,
    /// What goes to stderr: whole lines, each ending in a newline.
    pub stderr: String,
    /// The exit status.
    pub code: i32,
    /// The exit status when stdout cannot be written: 1, but 0 for the answer of a
    /// serf query (serf drops the answer of a handler that fails).
    pub code_if_unwritten: i32,
}

impl Output {
    /// `text` on stdout, exit `code`.
    pub fn stdout(text: impl Into<String>, code: i32) -> Output {
        Output {
            stdout: text.into(),
            stderr: String::new(),
            code,
            code_if_unwritten: 1,
        }
    }

    /// One message on stderr (a newline is added when it lacks one), exit `code`.
    pub fn stderr(message: impl Into<String>, code: i32) -> Output {
        let mut stderr = message.into();
        if !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        Output {
            stderr,
            ..Output::stdout("", code)
        }
    }

    /// Nothing to print (the deploy logs as it goes), exit `code`.
    pub fn code(code: i32) -> Output {
        Output::stdout("", code)
    }

    /// Bad usage: the error and the hint at `--help` on stderr, exit 2.
    pub fn usage(e: &Error) -> Output {
        Output::stderr(
            format!("stretcher: {e}\nTry 'stretcher --help' for more information.\n"),
            e.exit_code(),
        )
    }
}

/// `stretcher status [DEST...] [--json] [--brief] [--state-dir DIR]` (SPEC §13).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusOptions {
    /// Only these dests (as given); empty = every dest recorded.
    pub dests: Vec<PathBuf>,
    /// `--json`: the records, as a JSON array.
    pub json: bool,
    /// `--brief`: the brief JSON answer for a serf query.
    pub brief: bool,
    /// `--state-dir DIR`: the state directory the deploys used; `None` = as for a deploy.
    pub state_dir: Option<PathBuf>,
}

/// `stretcher fleet status` (SPEC §13): what to ask the serf agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetOptions {
    /// `--rpc-addr`: the serf agent's RPC address; `None` = serf's default.
    pub rpc_addr: Option<String>,
    /// `--tag KEY=VALUE` filters (VALUE is a serf regexp), in order.
    pub tags: Vec<(String, String)>,
    /// `--node NAME` filters.
    pub nodes: Vec<String>,
    /// `--timeout`: how long the query collects answers; `None` = serf's default.
    pub timeout: Option<Duration>,
    /// `--checksum`: every host must hold this checksum (lower-case hex).
    pub checksum: Option<String>,
    /// `--json`: print the result as one JSON object.
    pub json: bool,
    /// `--problems`: only the rows that are not success on their dest's majority
    /// checksum.
    pub problems: bool,
}

/// `stretcher rollout MANIFEST_URL ...` (SPEC §19): what to deploy, to whom, in which
/// waves, and when to halt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutOptions {
    /// The manifest URL every host is handed, as given (`waves` makes a local path
    /// `file://`).
    pub manifest_url: String,
    /// `--event NAME`: the user event the hosts deploy on (default `deploy`).
    pub event: String,
    /// `--waves LIST`: each wave's cumulative size (default `1,10%,50%,100%`).
    pub waves: Vec<crate::rollout::Size>,
    /// `--canary-tag KEY=VALUE`: hosts with this tag rank first.
    pub canary: Option<crate::rollout::Canary>,
    /// `--bake D`: how long to wait after a wave before asking again (default 0).
    pub bake: Duration,
    /// `--wave-timeout D`: how long a wave's hosts have to report (default 10m).
    pub wave_timeout: Duration,
    /// `--max-failed N|P%`: the failed hosts a rollout goes on with (default 0).
    pub max_failed: crate::rollout::Size,
    /// `--tag KEY=VALUE` filters (VALUE is a serf regexp), in order.
    pub tags: Vec<(String, String)>,
    /// `--rpc-addr`: the serf agent's RPC address; `None` = `SERF_RPC_ADDR` or serf's
    /// default.
    pub rpc_addr: Option<String>,
    /// `--trusted-key`: the manifest must be signed by one of these (SPEC §15).
    pub trusted_keys: Vec<TrustedKey>,
    /// `--dry-run`: print the plan, fire nothing.
    pub dry_run: bool,
    /// `--json`: print the result as one JSON object.
    pub json: bool,
}

/// `stretcher verify DEST [--content] [--json] [--state-dir DIR]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyOptions {
    /// The dest to compare with the index of its last successful deploy.
    pub dest: PathBuf,
    /// `--json`: print the drift as one JSON object.
    pub json: bool,
    /// `--content`: also read every regular file and compare its digest with the
    /// index's (SPEC §21); without it, a stat walk.
    pub content: bool,
    /// `--state-dir DIR`: the state directory the deploys used; `None` = as for a deploy.
    pub state_dir: Option<PathBuf>,
}

/// What `stretcher pack` was asked (SPEC §18).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackOptions {
    /// The directory to pack.
    pub dir: PathBuf,
    /// `-o`: the archive to write; its name says the codec (`.tar.gz`, `.tgz`,
    /// `.tar.zst`, `.tzst`).
    pub out: PathBuf,
    /// `--exclude P`: rsync exclude rules, in order.
    pub excludes: Vec<String>,
    /// `--owner`: keep the files' owners (ids and names) instead of 0:0 `root`.
    pub owner: bool,
    /// `--manifest`: also write a manifest.
    pub manifest: Option<ManifestOptions>,
}

/// The manifest `pack --manifest` writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestOptions {
    /// Where to write it.
    pub path: PathBuf,
    /// `--dest`.
    pub dest: String,
    /// `--src`: the archive's URL; default its path relative to the manifest's
    /// directory.
    pub src: Option<String>,
    /// `--dest-mode`, as written (octal).
    pub dest_mode: Option<String>,
    /// `--strategy`: `sync_strategy`.
    pub strategy: Option<String>,
    /// `--serial`.
    pub serial: Option<String>,
    /// `--expires`.
    pub expires: Option<String>,
}

/// `stretcher releases DEST [--state-dir DIR]` (SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleasesOptions {
    /// The dest of a release manifest (as given).
    pub dest: PathBuf,
    /// `--state-dir DIR`, accepted as by every subcommand; the releases themselves are
    /// found beside `dest`.
    pub state_dir: Option<PathBuf>,
}

/// `stretcher rollback DEST [--to ID] [--state-dir DIR]` (SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RollbackOptions {
    /// The dest of a release manifest (as given).
    pub dest: PathBuf,
    /// `--to ID`: the release to switch to; `None` = the newest good one older than
    /// the live one.
    pub to: Option<String>,
    /// `--state-dir DIR`: where the rollback's deploy record goes; `None` = as for a
    /// deploy.
    pub state_dir: Option<PathBuf>,
}

/// `stretcher catch-up [--tag KEY=VALUE]... [--quorum N] [--rpc-addr ADDR]
/// [--query-timeout D]` and every deploy flag (SPEC §20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpOptions {
    /// `--rpc-addr`: the serf agent's RPC address; `None` = `SERF_RPC_ADDR`, else
    /// serf's default.
    pub rpc_addr: Option<String>,
    /// `--tag KEY=VALUE` filters of the peers (VALUE is a serf regexp), in order;
    /// none = those sharing this host's `role` tag, when it has one.
    pub tags: Vec<(String, String)>,
    /// `--quorum N` (at least 1, default 2): how many peers must report a manifest.
    pub quorum: usize,
    /// `--query-timeout`: how long the query collects answers; `None` = the
    /// default (10s; the round ends as soon as every peer answered).
    pub query_timeout: Option<Duration>,
    /// The deploy flags, for every deploy it runs (no manifest URL of its own).
    pub deploy: Options,
}

/// `--quorum`'s default (SPEC §20).
pub const DEFAULT_QUORUM: usize = 2;

const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(3);
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses argv (without `argv[0]`): a subcommand when the first word names one
/// (SPEC §3; a manifest file of that name is written `./NAME`), else a deploy.
pub fn parse(args: &[OsString]) -> Result<Command> {
    let word = |i: usize| args.get(i).and_then(|a| a.to_str());
    let rest = args.get(1..).unwrap_or_default();
    match word(0) {
        Some("status") => parse_as::<RawStatus>(rest),
        Some("verify") => parse_as::<RawVerify>(rest),
        Some("releases") => parse_as::<RawReleases>(rest),
        Some("rollback") => parse_as::<RawRollback>(rest),
        Some("rollout") => parse_as::<RawRollout>(rest),
        Some("pack") => parse_as::<RawPack>(rest),
        Some("catch-up") => parse_as::<RawCatchUp>(rest),
        Some("fleet") => match word(1) {
            Some("status") => parse_as::<RawFleet>(&args[2..]),
            Some("-h" | "-help" | "--help") => Ok(Command::SubcommandHelp(fleet_usage())),
            Some(other) => Err(Error::Usage(format!(
                "unknown fleet subcommand {other:?}: expected `fleet status`"
            ))),
            None => Err(Error::Usage("expected `fleet status`".into())),
        },
        _ => parse_as::<RawArgs>(args),
    }
}

/// One command's argh struct, and what the parsing needs beside its flags (which
/// `Flags::of` reads from argh's own description of the struct).
trait Raw: FromArgs + ArgsInfo {
    /// The command as argh names it in its help and errors.
    const COMMAND: &'static [&'static str];
    /// Other spellings of a flag that takes a value: `(alias, flag)`.
    const ALIASES: &'static [(&'static str, &'static str)] = &[];
    /// `-v`, `--version` is a flag of this command (the deploy's only).
    const VERSION: bool = false;

    /// The error for a flag the command does not have.
    fn unknown_flag(arg: &str) -> String {
        format!("unknown flag: {arg} (see stretcher --help)")
    }

    /// An error of argh's own (a repeated flag, a missing positional), in the
    /// command's words.
    fn argh_error(message: &str) -> String {
        message.to_string()
    }

    /// What `--help` asks for.
    fn help() -> Command;

    /// The checked command.
    fn into_command(self) -> Result<Command>;

    /// The command, once it is known that argh read `words` (the normalised
    /// command line) into it: the deploy keeps them for `--detach`.
    fn with_words(command: Command, _words: &[&str], _flags: &Flags) -> Command {
        command
    }
}

/// The one parsing path of every command: normalise argv with the flags of `T`,
/// take `--help` / `--version` out, let argh parse the rest into `T`, check it.
fn parse_as<T: Raw>(args: &[OsString]) -> Result<Command> {
    let flags = Flags::of::<T>();
    let (help, version, words) = prepare(args, &flags)?;
    if help {
        return Ok(T::help());
    }
    if version {
        return Ok(Command::Version);
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let raw = T::from_args(T::COMMAND, &words).map_err(|e| {
        // `--help` never reaches argh (it is taken out above), so any early exit is
        // an error; argh's message ends with a newline.
        Error::Usage(T::argh_error(e.output.trim_end()))
    })?;
    Ok(T::with_words(raw.into_command()?, &words, &flags))
}

/// argh's own help text of `T` (`releases`, `rollback`).
fn argh_help<T: Raw>() -> String {
    // argh answers `--help` with an early exit holding the help text, never with
    // parsed arguments.
    T::from_args(T::COMMAND, &["--help"])
        .err()
        .map(|e| e.output)
        .unwrap_or_default()
}

/// What the normaliser knows of one command's flags: those of its argh struct (read
/// from argh's `ArgsInfo`, never kept by hand), its aliases, and its words for an
/// unknown flag.
#[derive(Debug, Clone)]
struct Flags {
    /// Flags that take a value: `(as written, argh's name)`, aliases included.
    values: Vec<(&'static str, &'static str)>,
    /// Flags without a value (`--dry-run`; Go's `-dry-run=true` / `=false` also work).
    switches: Vec<&'static str>,
    /// `-v` / `--version` is a flag of the command.
    version: bool,
    /// The error for a flag the command does not have.
    unknown: fn(&str) -> String,
}

impl Flags {
    fn of<T: Raw>() -> Flags {
        let mut values = Vec::new();
        let mut switches = Vec::new();
        for flag in T::get_args_info().flags {
            let Some(name) = flag.long.strip_prefix("--") else {
                continue;
            };
            // `--help` is argh's own: the normaliser takes it out before argh.
            if name == "help" {
                continue;
            }
            match flag.kind {
                FlagInfoKind::Switch => switches.push(name),
                FlagInfoKind::Option { .. } => values.push((name, name)),
            }
        }
        values.extend_from_slice(T::ALIASES);
        Flags {
            values,
            switches,
            version: T::VERSION,
            unknown: T::unknown_flag,
        }
    }
}

/// The raw, string-valued flags of a deploy; validation happens in `validate`.
#[derive(FromArgs, ArgsInfo, Debug)]
/// A pull-based deployment agent.
struct RawArgs {
    /// max bandwidth
    #[argh(option)]
    max_bandwidth: Option<String>,
    /// timeout
    #[argh(option)]
    timeout: Option<String>,
    /// stall timeout
    #[argh(option)]
    stall_timeout: Option<String>,
    /// random delay
    #[argh(option)]
    random_delay: Option<String>,
    /// retry
    #[argh(option)]
    retry: Option<String>,
    /// retry wait
    #[argh(option)]
    retry_wait: Option<String>,
    /// rsync verbose
    #[argh(option)]
    rsync_verbose: Option<String>,
    /// state dir
    #[argh(option)]
    state_dir: Option<String>,
    /// allowed URL prefixes (repeatable)
    #[argh(option)]
    allow_url: Vec<String>,
    /// dry run
    #[argh(switch)]
    dry_run: bool,
    /// force
    #[argh(switch)]
    force: bool,
    /// detach
    #[argh(switch)]
    detach: bool,
    /// command timeout
    #[argh(option)]
    command_timeout: Option<String>,
    /// textfile dir
    #[argh(option)]
    textfile_dir: Option<String>,
    /// trusted minisign public keys (repeatable)
    #[argh(option)]
    trusted_key: Vec<String>,
    /// manifest URL or path
    #[argh(positional)]
    target: Vec<String>,
}

impl Raw for RawArgs {
    const COMMAND: &'static [&'static str] = &["stretcher"];
    const ALIASES: &'static [(&'static str, &'static str)] = &[("max-band-width", "max-bandwidth")];
    const VERSION: bool = true;

    fn help() -> Command {
        Command::Help
    }

    fn into_command(self) -> Result<Command> {
        validate(self).map(Command::Run)
    }

    fn with_words(command: Command, words: &[&str], flags: &Flags) -> Command {
        match command {
            Command::Run(mut o) if o.detach.is_some() => {
                o.detach = Some(without_switch(words, flags, "detach"));
                Command::Run(o)
            }
            other => other,
        }
    }
}

/// `words` (a normalised command line: flags, each value right after its flag, then
/// `--` and the positionals) without the switch `--NAME`; a value or a positional
/// that reads `--NAME` is kept.
fn without_switch(words: &[&str], flags: &Flags, name: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut iter = words.iter();
    while let Some(&word) = iter.next() {
        if word == "--" {
            out.push(word.to_string());
            out.extend(iter.by_ref().map(|w| w.to_string()));
            break;
        }
        let flag = word.strip_prefix("--").unwrap_or(word);
        if flag == name {
            continue;
        }
        out.push(word.to_string());
        if !flags.switches.contains(&flag) {
            out.extend(iter.next().map(|w| w.to_string()));
        }
    }
    out
}

#[derive(FromArgs, ArgsInfo, Debug)]
/// stretcher verify
struct RawVerify {
    /// json
    #[argh(switch)]
    json: bool,
    /// content
    #[argh(switch)]
    content: bool,
    /// state dir
    #[argh(option)]
    state_dir: Option<String>,
    /// the dest
    #[argh(positional)]
    dest: Vec<String>,
}

impl Raw for RawVerify {
    const COMMAND: &'static [&'static str] = &["stretcher verify"];

    fn unknown_flag(arg: &str) -> String {
        format!("unknown flag for verify: {arg} (see stretcher verify --help)")
    }

    fn help() -> Command {
        Command::SubcommandHelp(verify_usage())
    }

    fn into_command(self) -> Result<Command> {
        let mut dests = self.dest.into_iter();
        let dest = dests
            .next()
            .ok_or_else(|| Error::Usage("verify needs a DEST directory".into()))?;
        if let Some(extra) = dests.next() {
            return Err(Error::Usage(format!(
                "verify takes one DEST (extra argument {extra:?})"
            )));
        }
        let state_dir = self.state_dir.map(dir_flag("state-dir")).transpose()?;
        if dest.trim().is_empty() {
            return Err(Error::Usage("verify: DEST is empty".into()));
        }
        Ok(Command::Verify(VerifyOptions {
            dest: PathBuf::from(dest),
            json: self.json,
            content: self.content,
            state_dir,
        }))
    }
}

/// `stretcher verify --help`.
pub(crate) fn verify_usage() -> String {
    "\
Usage: stretcher verify DEST [--content] [--json] [--state-dir DIR]

Compares DEST now with the index of its last successful deploy, read-only, and
prints one line per difference (dest-relative, directories ending in /):
  added PATH
  deleted PATH
  changed PATH (WHAT[,WHAT])   WHAT among type, size, mtime, mode, owner, target,
                               content
Excluded paths are never drift. Without --content it is a stat walk (one lstat
per entry): a file changed in place with its size and mtime restored is not seen.

  --content         also read every regular file and compare its sha256 with the
                    digest the index holds: changed PATH (content)
  --json            print {\"dest\", \"checksum\", \"deployed\", \"drift\": [{\"path\", \"kind\", \"what\"}]}
  --state-dir DIR   the state directory the deploys used (default as for a deploy)
  -h, --help        print this help

Exit status: 0 no drift, 1 drift, 2 no deploy recorded for DEST (or bad usage).
"
    .to_string()
}

// Arguments of `stretcher releases`; argh's help of it is the command's `--help`
// (whose spellings, as for every command, the normaliser takes).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(help_triggers("-h", "--help"))]
/// List the releases of DEST (sync_strategy release), newest first:
/// ID, checksum (12 digits), when deployed, and whether live or bad.
struct RawReleases {
    /// the dest of a release manifest
    #[argh(positional)]
    dest: String,
    /// the state directory the deploys used (the releases are found beside DEST)
    #[argh(option)]
    state_dir: Option<String>,
}

impl Raw for RawReleases {
    const COMMAND: &'static [&'static str] = &["stretcher", "releases"];

    fn unknown_flag(arg: &str) -> String {
        format!("unknown flag for releases: {arg} (see stretcher releases --help)")
    }

    fn argh_error(message: &str) -> String {
        format!("releases: {message}")
    }

    fn help() -> Command {
        Command::SubcommandHelp(argh_help::<Self>())
    }

    fn into_command(self) -> Result<Command> {
        Ok(Command::Releases(ReleasesOptions {
            dest: release_dest("releases", self.dest)?,
            state_dir: self.state_dir.map(dir_flag("state-dir")).transpose()?,
        }))
    }
}

// Arguments of `stretcher rollback`; argh's help of it is the command's `--help`
// (whose spellings, as for every command, the normaliser takes).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(help_triggers("-h", "--help"))]
/// Switch DEST back to the newest good release older than the live one (or to
/// --to ID) and mark the one left bad. Runs no hook and needs no network.
struct RawRollback {
    /// the dest of a release manifest
    #[argh(positional)]
    dest: String,
    /// the release ID to switch to (see `stretcher releases DEST`)
    #[argh(option)]
    to: Option<String>,
    /// where deploy records live (as for a deploy)
    #[argh(option)]
    state_dir: Option<String>,
}

impl Raw for RawRollback {
    const COMMAND: &'static [&'static str] = &["stretcher", "rollback"];

    fn unknown_flag(arg: &str) -> String {
        format!("unknown flag for rollback: {arg} (see stretcher rollback --help)")
    }

    fn argh_error(message: &str) -> String {
        format!("rollback: {message}")
    }

    fn help() -> Command {
        Command::SubcommandHelp(argh_help::<Self>())
    }

    fn into_command(self) -> Result<Command> {
        Ok(Command::Rollback(RollbackOptions {
            dest: release_dest("rollback", self.dest)?,
            to: self.to,
            state_dir: self.state_dir.map(dir_flag("state-dir")).transpose()?,
        }))
    }
}

/// The flags of `stretcher catch-up`: its own, then every flag of the deploy
/// (`RawArgs`) but the manifest URL, checked by the deploy's own `validate`
/// (`catch_up_has_every_deploy_flag` keeps the two lists together).
#[derive(FromArgs, ArgsInfo, Debug)]
/// stretcher catch-up
struct RawCatchUp {
    /// rpc addr
    #[argh(option)]
    rpc_addr: Option<String>,
    /// tag filters
    #[argh(option)]
    tag: Vec<String>,
    /// quorum
    #[argh(option)]
    quorum: Option<String>,
    /// query timeout
    #[argh(option)]
    query_timeout: Option<String>,
    /// max bandwidth
    #[argh(option)]
    max_bandwidth: Option<String>,
    /// timeout
    #[argh(option)]
    timeout: Option<String>,
    /// stall timeout
    #[argh(option)]
    stall_timeout: Option<String>,
    /// random delay
    #[argh(option)]
    random_delay: Option<String>,
    /// retry
    #[argh(option)]
    retry: Option<String>,
    /// retry wait
    #[argh(option)]
    retry_wait: Option<String>,
    /// rsync verbose
    #[argh(option)]
    rsync_verbose: Option<String>,
    /// state dir
    #[argh(option)]
    state_dir: Option<String>,
    /// allowed URL prefixes (repeatable)
    #[argh(option)]
    allow_url: Vec<String>,
    /// dry run
    #[argh(switch)]
    dry_run: bool,
    /// force
    #[argh(switch)]
    force: bool,
    /// command timeout
    #[argh(option)]
    command_timeout: Option<String>,
    /// textfile dir
    #[argh(option)]
    textfile_dir: Option<String>,
    /// trusted minisign public keys (repeatable)
    #[argh(option)]
    trusted_key: Vec<String>,
    /// nothing
    #[argh(positional)]
    extra: Vec<String>,
}

impl Raw for RawCatchUp {
    const COMMAND: &'static [&'static str] = &["stretcher catch-up"];
    const ALIASES: &'static [(&'static str, &'static str)] = &[("max-band-width", "max-bandwidth")];

    fn unknown_flag(arg: &str) -> String {
        format!("unknown flag for catch-up: {arg} (see stretcher catch-up --help)")
    }

    fn help() -> Command {
        Command::SubcommandHelp(catch_up_usage())
    }

    fn into_command(self) -> Result<Command> {
        if let Some(extra) = self.extra.first() {
            return Err(Error::Usage(format!(
                "catch-up takes no manifest URL: it deploys what its peers run (got {extra:?})"
            )));
        }
        let mut tags = Vec::new();
        for t in self.tag {
            match t.split_once('=') {
                Some((k, v)) if !k.is_empty() => tags.push((k.to_string(), v.to_string())),
                _ => return Err(bad_value("tag", &t, "expected KEY=VALUE")),
            }
        }
        let rpc_addr = match self.rpc_addr {
            Some(v) if v.trim().is_empty() => {
                return Err(bad_value("rpc-addr", &v, "expected HOST:PORT"))
            }
            v => v,
        };
        let quorum = match self.quorum {
            None => DEFAULT_QUORUM,
            Some(v) => match parse_count(&v) {
                Ok(0) => return Err(bad_value("quorum", &v, "must be at least 1")),
                Ok(n) => n as usize,
                Err(m) => return Err(bad_value("quorum", &v, &m)),
            },
        };
        let query_timeout = match self.query_timeout {
            None => None,
            Some(v) => Some(parse_duration(&v).map_err(|m| bad_value("query-timeout", &v, &m))?)
                .filter(|d| !d.is_zero()),
        };
        let deploy = validate(RawArgs {
            max_bandwidth: self.max_bandwidth,
            timeout: self.timeout,
            stall_timeout: self.stall_timeout,
            random_delay: self.random_delay,
            retry: self.retry,
            retry_wait: self.retry_wait,
            rsync_verbose: self.rsync_verbose,
            state_dir: self.state_dir,
            allow_url: self.allow_url,
            dry_run: self.dry_run,
            force: self.force,
            // each deploy runs in this process, one after the other
            detach: false,
            command_timeout: self.command_timeout,
            textfile_dir: self.textfile_dir,
            trusted_key: self.trusted_key,
            target: Vec::new(),
        })?;
        Ok(Command::CatchUp(CatchUpOptions {
            rpc_addr,
            tags,
            quorum,
            query_timeout,
            deploy,
        }))
    }
}

// Arguments of `stretcher pack`; argh's help of it is the command's `--help`.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(help_triggers("-h", "--help"))]
/// Write DIR as a packed archive (a tar.gz or tar.zst with a table of contents, SPEC
/// §18) and, with --manifest, the manifest that deploys it. Sign the manifest with
/// `minisign -S -m OUT.yml` for --trusted-key deploys.
struct RawPack {
    /// the directory to pack
    #[argh(positional)]
    dir: String,
    /// the archive to write: NAME.tar.gz (gzip) or NAME.tar.zst (zstd); also -o
    #[argh(option)]
    output: Option<String>,
    /// leave out paths matching this rsync exclude rule (repeatable)
    #[argh(option)]
    exclude: Vec<String>,
    /// keep the files' owners (default: 0:0, root/root)
    #[argh(switch)]
    owner: bool,
    /// also write the manifest to this file (needs --dest)
    #[argh(option)]
    manifest: Option<String>,
    /// the manifest's dest
    #[argh(option)]
    dest: Option<String>,
    /// the manifest's src URL (default: the archive's path relative to the manifest)
    #[argh(option)]
    src: Option<String>,
    /// the manifest's dest_mode (octal)
    #[argh(option)]
    dest_mode: Option<String>,
    /// the manifest's sync_strategy (rsync, mv, release)
    #[argh(option)]
    strategy: Option<String>,
    /// the manifest's serial
    #[argh(option)]
    serial: Option<String>,
    /// the manifest's expires (RFC 3339)
    #[argh(option)]
    expires: Option<String>,
}

impl Raw for RawPack {
    const COMMAND: &'static [&'static str] = &["stretcher", "pack"];
    const ALIASES: &'static [(&'static str, &'static str)] = &[("o", "output")];

    fn unknown_flag(arg: &str) -> String {
        format!("unknown flag for pack: {arg} (see stretcher pack --help)")
    }

    fn argh_error(message: &str) -> String {
        format!("pack: {message}")
    }

    fn help() -> Command {
        Command::SubcommandHelp(argh_help::<Self>())
    }

    fn into_command(self) -> Result<Command> {
        if self.dir.trim().is_empty() {
            return Err(Error::Usage("pack: DIR is empty".into()));
        }
        let out = match self.output {
            Some(o) if !o.trim().is_empty() => PathBuf::from(o),
            _ => {
                return Err(Error::Usage(
                    "pack: -o OUT.tar.gz|OUT.tar.zst is required".into(),
                ))
            }
        };
        let given: Vec<&str> = [
            ("--dest", self.dest.is_some()),
            ("--src", self.src.is_some()),
            ("--dest-mode", self.dest_mode.is_some()),
            ("--strategy", self.strategy.is_some()),
            ("--serial", self.serial.is_some()),
            ("--expires", self.expires.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
        let manifest = match self.manifest {
            None if given.is_empty() => None,
            None => {
                return Err(Error::Usage(format!(
                    "pack: {} needs --manifest",
                    given.join(", ")
                )))
            }
            Some(path) => {
                let dest = self
                    .dest
                    .filter(|d| !d.trim().is_empty())
                    .ok_or_else(|| Error::Usage("pack: --manifest needs --dest".into()))?;
                Some(ManifestOptions {
                    path: dir_flag("manifest")(path)?,
                    dest,
                    src: self.src,
                    dest_mode: self.dest_mode,
                    strategy: self.strategy,
                    serial: self.serial,
                    expires: self.expires,
                })
            }
        };
        Ok(Command::Pack(PackOptions {
            dir: PathBuf::from(self.dir),
            out,
            excludes: self.exclude,
            owner: self.owner,
            manifest,
        }))
    }
}

/// `stretcher catch-up --help`.
pub(crate) fn catch_up_usage() -> String {
    "\
Usage: stretcher catch-up [--tag KEY=VALUE]... [--quorum N] [--rpc-addr ADDR]
                          [--query-timeout DURATION] [DEPLOY FLAGS]

Brings this host to what its peers run (a host that was down during a deploy, or
is new). Asks the other serf members (by node name; this host never counts) the
query stretcher-status through the serf agent's RPC: those matching every --tag,
else those sharing this host's role tag when it has one, else all. For every dest
the peers report, it takes the manifest URL of the newest successful deploy
(highest serial, then latest finish) that at least N peers report, and deploys it
as an ordinary deploy: --trusted-key, --allow-url and the serial floor apply, so a
lying peer can point only at a manifest the fleet's key signed, never at an older
one than this host has. A dest already holding that manifest (its last deploy
here succeeded with the same URL and checksum) is left alone: nothing is fetched,
no hook runs. A dest whose newest URL the peers had to redact (a password or a
query string) or that reaches no quorum is skipped with a warning.

  --tag KEY=VALUE      only peers whose tag KEY matches VALUE (a regexp; repeatable)
  --quorum N           how many peers must report a manifest (default 2; when fewer
                       peers answer, all of them)
  --rpc-addr ADDR      the serf agent to ask (default: SERF_RPC_ADDR, else
                       127.0.0.1:7373); SERF_RPC_AUTH gives its auth key
  --query-timeout DURATION
                       how long to wait for answers (default 10s; the round ends
                       as soon as every peer has answered; peers still silent
                       are asked once more)

Every flag of the deploy is accepted and applies to each deploy it runs
(--trusted-key, --allow-url, --state-dir, --timeout, --retry, --dry-run, ...; see
stretcher --help). The serf agent runs the answering side on each host:
  serf agent -event-handler \"query:stretcher-status=stretcher status --brief --json\"

Exit status: 0 every dest is current, 1 a deploy failed or a dest was skipped (or
the serf agent cannot be asked), 2 bad usage, 3 no peer answered.
"
    .to_string()
}

/// The DEST of `releases` / `rollback`: any non-blank path.
fn release_dest(command: &str, dest: String) -> Result<PathBuf> {
    if dest.trim().is_empty() {
        return Err(Error::Usage(format!("{command}: DEST is empty")));
    }
    Ok(PathBuf::from(dest))
}

/// Normalises argv for one command's flags, then takes `--help` and `--version`
/// out: `(help, version, the words for argh)`.
fn prepare(args: &[OsString], flags: &Flags) -> Result<(bool, bool, Vec<String>)> {
    let argv = normalize_with(args, flags)?;
    let (opts, rest) = match argv.iter().position(|a| a == "--") {
        Some(i) => (&argv[..i], &argv[i..]),
        None => (&argv[..], &argv[argv.len()..]),
    };
    // `normalize` keeps a value right after its flag, so a bare `--help` /
    // `--version` at an even position among the flag words is the flag itself.
    let mut words = opts.iter();
    let (mut help, mut version) = (false, false);
    let mut for_argh: Vec<String> = Vec::with_capacity(argv.len());
    while let Some(word) = words.next() {
        match word.as_str() {
            "--help" => help = true,
            "--version" => version = true,
            flag if flag
                .strip_prefix("--")
                .is_some_and(|name| flags.switches.contains(&name)) =>
            {
                for_argh.push(flag.to_string())
            }
            flag => {
                for_argh.push(flag.to_string());
                if let Some(value) = words.next() {
                    for_argh.push(value.clone());
                }
            }
        }
    }
    for_argh.extend(rest.iter().cloned());
    Ok((help, version, for_argh))
}

#[derive(FromArgs, ArgsInfo, Debug)]
/// stretcher status
struct RawStatus {
    /// json
    #[argh(switch)]
    json: bool,
    /// brief
    #[argh(switch)]
    brief: bool,
    /// state dir
    #[argh(option)]
    state_dir: Option<String>,
    /// dests
    #[argh(positional)]
    dests: Vec<String>,
}

impl Raw for RawStatus {
    const COMMAND: &'static [&'static str] = &["stretcher status"];

    fn help() -> Command {
        Command::SubcommandHelp(status_usage())
    }

    fn into_command(self) -> Result<Command> {
        if self.dests.iter().any(|d| d.trim().is_empty()) {
            return Err(Error::Usage("status: a DEST argument is empty".into()));
        }
        Ok(Command::Status(StatusOptions {
            dests: self.dests.into_iter().map(PathBuf::from).collect(),
            json: self.json,
            brief: self.brief,
            state_dir: self.state_dir.map(dir_flag("state-dir")).transpose()?,
        }))
    }
}

#[derive(FromArgs, ArgsInfo, Debug)]
/// stretcher fleet status
struct RawFleet {
    /// rpc addr
    #[argh(option)]
    rpc_addr: Option<String>,
    /// tag filters
    #[argh(option)]
    tag: Vec<String>,
    /// node filters
    #[argh(option)]
    node: Vec<String>,
    /// timeout
    #[argh(option)]
    timeout: Option<String>,
    /// checksum
    #[argh(option)]
    checksum: Option<String>,
    /// json
    #[argh(switch)]
    json: bool,
    /// problems
    #[argh(switch)]
    problems: bool,
    /// nothing
    #[argh(positional)]
    extra: Vec<String>,
}

impl Raw for RawFleet {
    const COMMAND: &'static [&'static str] = &["stretcher fleet status"];

    fn help() -> Command {
        Command::SubcommandHelp(fleet_usage())
    }

    fn into_command(self) -> Result<Command> {
        if let Some(extra) = self.extra.first() {
            return Err(Error::Usage(format!(
                "fleet status takes no arguments (got {extra:?})"
            )));
        }
        let mut o = FleetOptions {
            json: self.json,
            problems: self.problems,
            ..FleetOptions::default()
        };
        if let Some(v) = self.rpc_addr {
            if v.trim().is_empty() {
                return Err(bad_value("rpc-addr", &v, "expected HOST:PORT"));
            }
            o.rpc_addr = Some(v);
        }
        for t in self.tag {
            match t.split_once('=') {
                Some((k, v)) if !k.is_empty() => o.tags.push((k.to_string(), v.to_string())),
                _ => return Err(bad_value("tag", &t, "expected KEY=VALUE")),
            }
        }
        for n in self.node {
            if n.is_empty() {
                return Err(bad_value("node", &n, "expected a node name"));
            }
            o.nodes.push(n);
        }
        if let Some(v) = self.timeout {
            o.timeout = Some(parse_duration(&v).map_err(|m| bad_value("timeout", &v, &m))?)
                .filter(|d| !d.is_zero());
        }
        if let Some(v) = self.checksum {
            let hex = v.trim().to_ascii_lowercase();
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad_value("checksum", &v, "expected hex digits"));
            }
            o.checksum = Some(hex);
        }
        Ok(Command::FleetStatus(o))
    }
}

#[derive(FromArgs, ArgsInfo, Debug)]
/// stretcher rollout
struct RawRollout {
    /// event name
    #[argh(option)]
    event: Option<String>,
    /// waves
    #[argh(option)]
    waves: Option<String>,
    /// canary tag
    #[argh(option)]
    canary_tag: Option<String>,
    /// bake
    #[argh(option)]
    bake: Option<String>,
    /// wave timeout
    #[argh(option)]
    wave_timeout: Option<String>,
    /// max failed
    #[argh(option)]
    max_failed: Option<String>,
    /// tag filters
    #[argh(option)]
    tag: Vec<String>,
    /// rpc addr
    #[argh(option)]
    rpc_addr: Option<String>,
    /// trusted keys
    #[argh(option)]
    trusted_key: Vec<String>,
    /// dry run
    #[argh(switch)]
    dry_run: bool,
    /// json
    #[argh(switch)]
    json: bool,
    /// the manifest URL
    #[argh(positional)]
    target: Vec<String>,
}

impl Raw for RawRollout {
    const COMMAND: &'static [&'static str] = &["stretcher rollout"];

    fn help() -> Command {
        Command::SubcommandHelp(rollout_usage())
    }

    fn into_command(self) -> Result<Command> {
        let mut targets = self.target.into_iter();
        let target = match (targets.next(), targets.next()) {
            (Some(t), None) if !t.trim().is_empty() => t,
            (Some(_), None) => {
                return Err(Error::Usage("rollout: the manifest URL is empty".into()))
            }
            (None, _) => {
                return Err(Error::Usage(
                    "rollout: expected the manifest URL (stretcher rollout MANIFEST_URL)".into(),
                ))
            }
            (Some(_), Some(extra)) => {
                return Err(Error::Usage(format!(
                    "rollout: only one manifest URL may be given (extra argument {extra:?})"
                )))
            }
        };
        if target.chars().any(char::is_whitespace) {
            return Err(bad_value(
                "MANIFEST_URL",
                &target,
                "a wave's payload cannot carry white space in the URL",
            ));
        }
        let manifest_url = target;
        let event = self.event.unwrap_or_else(|| "deploy".into());
        if event.is_empty() || !event.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad_value("event", &event, "expected a serf event name"));
        }
        let waves = match self.waves {
            Some(v) => crate::rollout::parse_waves(&v).map_err(|m| bad_value("waves", &v, &m))?,
            None => crate::rollout::default_waves(),
        };
        let canary = self
            .canary_tag
            .map(|v| {
                crate::rollout::Canary::parse(&v).map_err(|_| {
                    bad_value("canary-tag", &v, "expected KEY=VALUE (printable, no space)")
                })
            })
            .transpose()?;
        let duration = |flag: &str, v: Option<String>, default: Duration| match v {
            Some(v) => parse_duration(&v).map_err(|m| bad_value(flag, &v, &m)),
            None => Ok(default),
        };
        let bake = duration("bake", self.bake, Duration::ZERO)?;
        let wave_timeout = duration(
            "wave-timeout",
            self.wave_timeout,
            crate::rollout::DEFAULT_WAVE_TIMEOUT,
        )?;
        if wave_timeout.is_zero() {
            return Err(bad_value(
                "wave-timeout",
                "0",
                "a wave needs time to deploy (e.g. 10m)",
            ));
        }
        let max_failed = match self.max_failed {
            Some(v) => crate::rollout::Size::parse_limit(&v)
                .map_err(|m| bad_value("max-failed", &v, &m))?,
            None => crate::rollout::Size::Count(0),
        };
        let mut tags = Vec::new();
        for t in self.tag {
            match t.split_once('=') {
                Some((k, v)) if !k.is_empty() => tags.push((k.to_string(), v.to_string())),
                _ => return Err(bad_value("tag", &t, "expected KEY=VALUE")),
            }
        }
        if let Some(v) = &self.rpc_addr {
            if v.trim().is_empty() {
                return Err(bad_value("rpc-addr", v, "expected HOST:PORT"));
            }
        }
        let mut trusted_keys = Vec::new();
        for k in &self.trusted_key {
            trusted_keys.push(TrustedKey::parse(k).map_err(|m| bad_value("trusted-key", k, &m))?);
        }
        Ok(Command::Rollout(RolloutOptions {
            manifest_url,
            event,
            waves,
            canary,
            bake,
            wave_timeout,
            max_failed,
            tags,
            rpc_addr: self.rpc_addr,
            trusted_keys,
            dry_run: self.dry_run,
            json: self.json,
        }))
    }
}

/// `stretcher rollout --help`.
pub(crate) fn rollout_usage() -> String {
    "\
Usage: stretcher rollout MANIFEST_URL [--event NAME] [--waves LIST]
                         [--canary-tag KEY=VALUE] [--bake D] [--wave-timeout D]
                         [--max-failed N|P%] [--tag KEY=VALUE]... [--rpc-addr ADDR]
                         [--trusted-key KEY]... [--dry-run] [--json]

Deploys MANIFEST_URL to the serf members in waves: a canary first, then growing
waves, each one serf event that only the hosts ranked in it deploy, watched
through the stretcher-status query; halts when more hosts failed than allowed.
The manifest is fetched and checked first (signature, YAML, every key's form).
The hosts need their usual handlers, user:NAME=stretcher and
query:stretcher-status=stretcher status --brief --json. No server of ours.

  --event NAME          the user event the hosts deploy on (default: deploy)
  --waves LIST          cumulative wave sizes, counts or percentages of the
                        members (default: 1,10%,50%,100%)
  --canary-tag K=V      hosts whose serf tag K is V come first
  --bake D              after a wave, wait D and ask again: a host now failing
                        or silent counts as failed (default: 0)
  --wave-timeout D      a host that has not reported by then counts as failed
                        (default: 10m)
  --max-failed N|P%     failed hosts (a count, or a percentage of the planned
                        hosts, rounded down) the rollout goes on with (default: 0)
  --tag KEY=VALUE       only members whose tag KEY matches VALUE (a regexp;
                        repeatable)
  --rpc-addr ADDR       the serf agent to speak to (default: SERF_RPC_ADDR, else
                        127.0.0.1:7373; SERF_RPC_AUTH is its key)
  --trusted-key KEY     the manifest must be signed by one of these keys
  --dry-run             print the plan, one line per host: WAVE NODE RANK
  --json                print one JSON object: rollout, plan, hosts

Exit status: 0 every planned host deployed; 1 the rollout halted, a wave did not
finish, or any host failed; 2 bad usage.
"
    .to_string()
}

/// `stretcher status --help`.
pub(crate) fn status_usage() -> String {
    "\
Usage: stretcher status [DEST...] [--json] [--brief] [--state-dir DIR]

The last deploy of each dest recorded in the state directory (or of the DESTs
named), one line each: DEST RESULT CHECKSUM FINISHED DURATION MANIFEST_URL, and
for a failure `failed at STEP: ERROR`. A deploy in progress shows as `running
since STARTED (pid PID)`; one whose process ended without finishing its record
(killed) as `interrupted`. Reads the state directory only.

  --json           the records, as a JSON array
  --brief          the brief JSON answer for a serf query (with or without
                   --json): host and, per dest, result, checksum, finished,
                   failed_step, error, manifest_url and serial, within serf's
                   1024-byte response limit; when dests must be left out, those
                   not successful are kept first and `omitted` counts the rest
  --state-dir DIR  the state directory the deploys used (default as for a deploy)

Exit status: 0 every last deploy succeeded, 1 one did not (failed, refused,
interrupted, or still running), 3 nothing recorded (for the DESTs named). Under a serf query (SERF_EVENT=query) it always exits 0
and writes nothing on stderr, so that serf delivers the answer:
  serf agent -event-handler \"query:stretcher-status=stretcher status --brief --json\"
"
    .to_string()
}

/// `stretcher fleet status --help`.
pub(crate) fn fleet_usage() -> String {
    "\
Usage: stretcher fleet status [--rpc-addr ADDR] [--tag KEY=VALUE]... [--node NAME]...
                              [--timeout DURATION] [--checksum HEX] [--problems] [--json]

Asks every serf member for its last deploys (the query stretcher-status, answered
by `stretcher status --brief --json` on each host) through the serf agent's RPC, and
prints one row per host and dest, then `N answered of M alive members: S success, F
failure, K silent, U unreachable` (and the running, partial and invalid members by
name), and, for each dest whose hosts disagree, each checksum and on how many hosts
the last deploy succeeded with it. The round ends as soon as every alive member has
answered. Members serf reports as failed are unreachable; members that left are not
counted. No `serf` binary needed.

  --rpc-addr ADDR      the serf agent to ask (default: SERF_RPC_ADDR, else
                       127.0.0.1:7373); SERF_RPC_AUTH gives its auth key
  --tag KEY=VALUE      only members whose tag KEY matches VALUE (a regexp; repeatable)
  --node NAME          only this member (repeatable)
  --timeout DURATION   how long to wait for answers (default: serf's query timeout)
  --checksum HEX       every host must hold this checksum (its first 12 digits
                       are compared)
  --problems           only the rows that are not success on their dest's majority
                       checksum (on a tie, every row of that dest), and those of
                       hosts judged otherwise (another --checksum, a partial answer)
  --json               print the result as one JSON object

Exit status (with or without --problems): 0 when every alive member answered and its
last deploys succeeded (and, with --checksum, it holds that checksum); 1 otherwise
(a failure, a deploy running, an answer that left dests out, a silent or unreachable
member) or when the serf agent cannot be asked; 2 bad usage.
"
    .to_string()
}

/// Rewrites argv into the canonical form: `--name value` pairs (aliases resolved,
/// `=value` split off), `--help`, `--version`, then `--` and the positionals.
#[cfg(test)]
fn normalize(args: &[OsString]) -> Result<Vec<String>> {
    normalize_with(args, &Flags::of::<RawArgs>())
}

/// `normalize` for a command whose flags are `flags`.
fn normalize_with(args: &[OsString], flags: &Flags) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut positionals = Vec::new();
    let mut iter = args.iter();
    let mut options_ended = false;
    while let Some(arg) = iter.next() {
        let arg = utf8_arg(arg)?;
        if options_ended || arg == "-" || !arg.starts_with('-') {
            positionals.push(arg.to_string());
            continue;
        }
        if arg == "--" {
            options_ended = true;
            continue;
        }
        let (name, inline) = split_flag(arg)?;
        match name {
            "h" | "help" => words.push(help_or_version(name, inline)?),
            "v" | "version" if flags.version => words.push(help_or_version(name, inline)?),
            name if flags.switches.contains(&name) => words.extend(switch_flag(name, inline)?),
            _ => {
                let (flag, value) = value_flag(arg, name, inline, flags, &mut iter)?;
                words.push(flag);
                words.push(value);
            }
        }
    }
    if !positionals.is_empty() {
        words.push("--".to_string());
        words.extend(positionals);
    }
    Ok(words)
}

/// An argument as text (flags and values are UTF-8).
fn utf8_arg(arg: &OsString) -> Result<&str> {
    arg.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "argument {:?} is not valid UTF-8",
            arg.to_string_lossy()
        ))
    })
}

/// `-name`, `--name`, `-name=value`: the name and the inline value.
fn split_flag(arg: &str) -> Result<(&str, Option<&str>)> {
    let body = arg
        .strip_prefix("--")
        .or_else(|| arg.strip_prefix('-'))
        .unwrap_or(arg);
    if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
        return Err(Error::Usage(format!("bad flag syntax: {arg}")));
    }
    Ok(match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    })
}

/// `-h`, `-help`, `-v`, `-version` → `--help` / `--version` (never with a value).
fn help_or_version(name: &str, inline: Option<&str>) -> Result<String> {
    if inline.is_some() {
        return Err(Error::Usage(format!("flag -{name} does not take a value")));
    }
    let canonical = if name.starts_with('h') {
        "--help"
    } else {
        "--version"
    };
    Ok(canonical.to_string())
}

/// A switch: `--name` when on (bare, `=true`, `=1`), nothing when off (`=false`, `=0`).
fn switch_flag(name: &str, inline: Option<&str>) -> Result<Option<String>> {
    match inline {
        None | Some("true" | "1") => Ok(Some(format!("--{name}"))),
        Some("false" | "0") => Ok(None),
        Some(v) => Err(Error::Usage(format!(
            "invalid value {v:?} for flag --{name}: expected true or false"
        ))),
    }
}

/// A flag with a value: its canonical `--name` and the value (inline, else the next
/// argument).
fn value_flag<'a>(
    arg: &str,
    name: &str,
    inline: Option<&str>,
    flags: &Flags,
    rest: &mut impl Iterator<Item = &'a OsString>,
) -> Result<(String, String)> {
    let Some(&(_, canonical)) = flags.values.iter().find(|(n, _)| *n == name) else {
        return Err(Error::Usage((flags.unknown)(arg)));
    };
    let value = match inline {
        Some(v) => v.to_string(),
        // The next word is the value whatever it looks like:
        // `--rsync-verbose -vv` must work.
        None => match rest.next() {
            Some(v) => v
                .to_str()
                .ok_or_else(|| Error::Usage(format!("value of -{name} is not valid UTF-8")))?
                .to_string(),
            None => return Err(Error::Usage(format!("flag needs an argument: -{name}"))),
        },
    };
    Ok((format!("--{canonical}"), value))
}

fn validate(raw: RawArgs) -> Result<Options> {
    let mut o = Options::default();
    if let Some(v) = raw.max_bandwidth {
        o.max_bandwidth = Some(parse_bytes(&v).map_err(|m| bad_value("max-bandwidth", &v, &m))?)
            .filter(|&n| n > 0);
    }
    if let Some(v) = raw.timeout {
        o.timeout = Some(parse_duration(&v).map_err(|m| bad_value("timeout", &v, &m))?)
            .filter(|d| !d.is_zero());
    }
    if let Some(v) = raw.stall_timeout {
        o.stall_timeout = Some(parse_duration(&v).map_err(|m| bad_value("stall-timeout", &v, &m))?)
            .filter(|d| !d.is_zero());
    }
    if let Some(v) = raw.random_delay {
        o.random_delay = Some(parse_duration(&v).map_err(|m| bad_value("random-delay", &v, &m))?)
            .filter(|d| !d.is_zero());
    }
    if let Some(v) = raw.retry {
        o.retry = parse_count(&v).map_err(|m| bad_value("retry", &v, &m))?;
    }
    if let Some(v) = raw.retry_wait {
        o.retry_wait = parse_duration(&v).map_err(|m| bad_value("retry-wait", &v, &m))?;
    }
    if let Some(v) = raw.rsync_verbose {
        o.rsync_verbose = match v.as_str() {
            "" => 0,
            "-v" => 1,
            "-vv" => 2,
            "-vvv" => 3,
            _ => {
                return Err(bad_value(
                    "rsync-verbose",
                    &v,
                    "expected \"\", -v, -vv or -vvv",
                ))
            }
        };
    }
    o.dry_run = raw.dry_run;
    o.force = raw.force;
    if raw.detach {
        if raw.dry_run {
            return Err(Error::Usage(
                "--detach and --dry-run cannot be used together (a detached run prints nowhere)"
                    .into(),
            ));
        }
        // The arguments are filled in by `with_words`.
        o.detach = Some(Vec::new());
    }
    if let Some(v) = raw.command_timeout {
        o.command_timeout =
            Some(parse_duration(&v).map_err(|m| bad_value("command-timeout", &v, &m))?)
                .filter(|d| !d.is_zero());
    }
    if let Some(v) = raw.state_dir {
        if v.trim().is_empty() {
            return Err(bad_value("state-dir", &v, "expected a directory path"));
        }
        o.state_dir = Some(PathBuf::from(v));
    }
    o.textfile_dir = raw.textfile_dir.map(dir_flag("textfile-dir")).transpose()?;
    o.allow_url = AllowList::new(&raw.allow_url).map_err(|m| {
        Error::Usage(format!(
            "invalid value for flag --allow-url: {m}; expected a URL prefix like https://host/dir/"
        ))
    })?;
    for k in &raw.trusted_key {
        o.trusted_keys
            .push(TrustedKey::parse(k).map_err(|m| bad_value("trusted-key", k, &m))?);
    }
    let mut targets = raw.target.into_iter();
    o.target = targets.next();
    if let Some(extra) = targets.next() {
        return Err(Error::Usage(format!(
            "only one manifest URL or path may be given (extra argument {extra:?})"
        )));
    }
    if o.target.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(Error::Usage("the manifest URL argument is empty".into()));
    }
    Ok(o)
}

/// A directory-valued flag: any non-blank path.
fn dir_flag(flag: &'static str) -> impl Fn(String) -> Result<PathBuf> {
    move |v| {
        if v.trim().is_empty() {
            return Err(bad_value(flag, &v, "expected a directory path"));
        }
        Ok(PathBuf::from(v))
    }
}

fn bad_value(flag: &str, value: &str, msg: &str) -> Error {
    Error::Usage(format!("invalid value {value:?} for flag --{flag}: {msg}"))
}

/// A byte count as go-humanize's `ParseBytes` reads it: `1000000`, `10M` = `10MB`
/// = 10^7, `512KiB` = 512·2^10, `1.5GB`, any case, spaces and `,` allowed.
fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err("must not be negative".into());
    }
    if t.is_empty() {
        // The Go tool treated an empty value as "no limit".
        return Ok(0);
    }
    let without_commas: String = t.chars().filter(|&c| c != ',').collect();
    parse_size::parse_size(&without_commas)
        .map_err(|e| format!("{e}; expected bytes per second like 1000000, 10M, 512KiB"))
}

/// A non-negative integer count.
fn parse_count(text: &str) -> std::result::Result<u32, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err("must not be negative".into());
    }
    t.parse::<u32>()
        .map_err(|e| format!("{e}; expected a non-negative integer"))
}

/// Seconds (`30`, `2.5`) or a duration (`1m30s`, `500ms`, `1.5h`, `2 minutes`).
pub(crate) fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    const HINT: &str = "expected seconds (30, 2.5) or a duration (1m30s, 500ms)";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty; {HINT}"));
    }
    if t.starts_with('-') {
        return Err("must not be negative".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{e}; {HINT}"));
    }
    if let Some(d) = parse_go_duration(t) {
        return Ok(d);
    }
    humantime::parse_duration(t).map_err(|e| format!("{e}; {HINT}"))
}

/// Go's `time.ParseDuration` for non-negative values: `[+]{number unit}+`, units
/// ns, us, µs, ms, s, m, h; fractions allowed (`1.5h`); `0` alone is zero.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let s = text.strip_prefix('+').unwrap_or(text);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += value * scale;
        rest = tail;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total_ns.round() as u64))
}

/// The `--help` text: every flag, both spellings, and the ways to hand over a URL.
pub fn usage() -> String {
    format!(
        "\
stretcher {VERSION} - a pull-based deployment agent

Usage:
  stretcher [FLAGS] [MANIFEST_URL | PATH]
  consul watch -type event -name NAME stretcher [FLAGS]
  serf agent -event-handler \"user:NAME=stretcher [FLAGS]\"
  echo MANIFEST_URL | stretcher [FLAGS]

Without a positional argument the manifest URL is read from stdin: a Consul event
list (JSON), a Serf user event payload, or one line. A local PATH means file://PATH.

Flags (each may be written -flag or --flag, with =value or a separate value):
  --max-bandwidth BYTES   cap the download rate of src, bytes per second
                          (1000000, 10M = 10MB = 10^7, 512KiB); 0 = unlimited
                          (alias --max-band-width)
  --timeout DURATION      whole-download deadline, retries included: seconds (30)
                          or a duration (1m30s, 500ms); 0 = none (default)
  --stall-timeout DURATION
                          fail a download attempt (retried with --retry) that
                          receives no byte for DURATION (default 60s); 0 = none
  --random-delay DURATION
                          sleep a random time in [0, DURATION) before anything
                          else: seconds (2.5) or a duration
  --retry N               extra download attempts after a failure (default 0)
  --retry-wait DURATION   pause between download attempts (default 3s)
  --rsync-verbose LEVEL   how much of the sync is logged: \"\", -v (default), -vv, -vvv
  --state-dir DIR         where the last handled consul/serf event of each name is
                          remembered, so that a replayed event is skipped (default
                          /var/lib/stretcher when writable, else
                          $XDG_STATE_HOME/stretcher or ~/.local/state/stretcher)
  --allow-url PREFIX      refuse a manifest or src URL that starts with none of the
                          PREFIXes (repeatable; end each with /); checked before
                          anything is fetched
  --dry-run               fetch, verify and unpack src, then print what the deploy
                          would do (add / update / delete lines for dest, the hooks
                          it would run) on stdout; change nothing in dest, run no
                          command, exit 0
  --command-timeout DURATION
                          kill a hook command (its whole process group: SIGTERM,
                          then SIGKILL 2s later) that runs longer than DURATION and
                          fail the deploy; 0 = no limit (default)
  --textfile-dir DIR      after each deploy, write DIR/stretcher-KEY.prom for
                          node_exporter's textfile collector
  --trusted-key KEY       a minisign public key (its RW... line, or a .pub file);
                          repeatable. With any, every manifest must have a valid
                          signature by one of them at MANIFEST_URL.minisig
  --force                 deploy even when dest already holds the archive (by
                          default a redeploy of what dest still holds, unchanged,
                          downloads nothing and runs only the hooks)
  --detach                hand the deploy to a detached process (this command
                          without --detach, in a session of its own, the event's
                          stdin passed on) and exit 0 at once, so that the agent
                          that ran it stays free to answer queries; for the serf
                          handler line: \"user:deploy=stretcher --detach\". Lock,
                          record and hooks as usual; its log is appended to
                          STATE_DIR/detach.log; while it runs, `stretcher status`
                          shows the dest as running
  -v, --version           print the version and exit
  -h, --help              print this help and exit

Subcommands (first argument; a manifest file of that name is written ./NAME),
each with its own --help:
  verify DEST             report drift of DEST since its last deploy
  status [DEST...]        the last deploy of each dest recorded on this host
  fleet status            the last deploys of every host, asked through serf
  releases DEST           list the releases of DEST (sync_strategy release)
  rollback DEST [--to ID] switch DEST back to an older good release
  rollout MANIFEST_URL    deploy to the serf members in waves, halting on failure
  pack DIR -o OUT.tar.gz  write DIR as a packed archive (+ --manifest OUT.yml)
  catch-up                deploy what the serf peers run (a host that missed deploys)

Exit status: 0 success, 1 the deploy failed, 2 bad usage. Under consul watch
(CONSUL_INDEX set) a failed deploy exits 0 after running the failure commands.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn run(args: &[&str]) -> Options {
        match parse(&os(args)) {
            Ok(Command::Run(o)) => o,
            other => panic!("{args:?}: expected Run, got {other:?}"),
        }
    }

    fn usage_err(args: &[&str]) -> String {
        match parse(&os(args)) {
            Err(Error::Usage(m)) => m,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn normalizer_table() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["-timeout", "5"], &["--timeout", "5"]),
            (&["--timeout", "5"], &["--timeout", "5"]),
            (&["-timeout=5"], &["--timeout", "5"]),
            (&["--timeout=5"], &["--timeout", "5"]),
            (&["-max-band-width", "1M"], &["--max-bandwidth", "1M"]),
            (&["--max-band-width=1M"], &["--max-bandwidth", "1M"]),
            (&["-rsync-verbose", "-vv"], &["--rsync-verbose", "-vv"]),
            (&["--rsync-verbose=-vv"], &["--rsync-verbose", "-vv"]),
            (&["-rsync-verbose="], &["--rsync-verbose", ""]),
            (&["-rsync-verbose", ""], &["--rsync-verbose", ""]),
            (
                &["--rsync-verbose", "-v", "x"],
                &["--rsync-verbose", "-v", "--", "x"],
            ),
            (&["-v"], &["--version"]),
            (&["-version"], &["--version"]),
            (&["--version"], &["--version"]),
            (&["-h"], &["--help"]),
            (&["-help"], &["--help"]),
            (&["--help"], &["--help"]),
            (&["s3://b/m.yml"], &["--", "s3://b/m.yml"]),
            (
                &["s3://b/m.yml", "-retry", "2"],
                &["--retry", "2", "--", "s3://b/m.yml"],
            ),
            (&["--", "-odd-name"], &["--", "-odd-name"]),
            (&["-"], &["--", "-"]),
            (&["help"], &["--", "help"]),
            (&["--timeout", "--help"], &["--timeout", "--help"]),
            (&["-state-dir", "/s"], &["--state-dir", "/s"]),
            (&["--state-dir=/s"], &["--state-dir", "/s"]),
            (
                &["-allow-url", "s3://b/", "--allow-url=file:///srv/"],
                &["--allow-url", "s3://b/", "--allow-url", "file:///srv/"],
            ),
            (&["-dry-run", "m.yml"], &["--dry-run", "--", "m.yml"]),
            (&["--dry-run=true"], &["--dry-run"]),
            (&["-dry-run=1"], &["--dry-run"]),
            (&["-dry-run=false"], &[]),
            (&["--timeout", "--dry-run"], &["--timeout", "--dry-run"]),
            (&["-command-timeout", "5m"], &["--command-timeout", "5m"]),
            (
                &["--command-timeout=1m30s"],
                &["--command-timeout", "1m30s"],
            ),
        ];
        for (input, want) in cases {
            let got = normalize(&os(input)).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(got, *want, "input {input:?}");
        }
    }

    #[test]
    fn normalizer_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["-timeout"], "flag needs an argument: -timeout"),
            (&["--bogus"], "unknown flag: --bogus"),
            (&["-dry-runs", "/x"], "unknown flag: -dry-runs"),
            (&["-state-dir"], "flag needs an argument: -state-dir"),
            (&["--allow-url"], "flag needs an argument: -allow-url"),
            (&["---timeout", "1"], "bad flag syntax"),
            (&["-=1"], "bad flag syntax"),
            (&["-version=1"], "does not take a value"),
            (&["--dry-run=maybe"], "--dry-run"),
            (
                &["-command-timeout"],
                "flag needs an argument: -command-timeout",
            ),
        ];
        for (input, want) in cases {
            let e = normalize(&os(input)).expect_err(&format!("{input:?}"));
            assert!(e.to_string().contains(want), "{input:?}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert_eq!(o.retry_wait, Duration::from_secs(3));
        assert_eq!(o.rsync_verbose, 1);
        assert_eq!(o.max_bandwidth, None);
        assert_eq!(o.timeout, None);
        assert_eq!(o.target, None);
    }

    #[test]
    fn help_and_version() {
        for args in [&["-h"][..], &["--help"], &["-help"], &["-retry", "1", "-h"]] {
            assert_eq!(parse(&os(args)).unwrap(), Command::Help, "{args:?}");
        }
        for args in [&["-v"][..], &["-version"], &["--version"], &["--v"]] {
            assert_eq!(parse(&os(args)).unwrap(), Command::Version, "{args:?}");
        }
        // `-v` as the value of --rsync-verbose is not the version flag.
        assert_eq!(run(&["--rsync-verbose", "-v"]).rsync_verbose, 1);
        // After `--` it is a positional.
        assert_eq!(run(&["--", "--help"]).target.as_deref(), Some("--help"));
        // argh's own `help` trigger does not swallow a file named help.
        assert_eq!(run(&["help"]).target.as_deref(), Some("help"));
    }

    #[test]
    fn max_bandwidth_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1000000", Some(1_000_000)),
            ("10M", Some(10_000_000)),
            ("10MB", Some(10_000_000)),
            ("10mb", Some(10_000_000)),
            ("10 MB", Some(10_000_000)),
            ("512KiB", Some(512 * 1024)),
            ("512kib", Some(512 * 1024)),
            ("1.5GB", Some(1_500_000_000)),
            ("2Ki", Some(2048)),
            ("1,000,000", Some(1_000_000)),
            ("100B", Some(100)),
            ("0", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(run(&["-max-bandwidth", v]).max_bandwidth, *want, "{v:?}");
            let joined = format!("--max-band-width={v}");
            assert_eq!(run(&[&joined]).max_bandwidth, *want, "{joined:?}");
        }
        for bad in ["-1", "abc", "10XB", "1..5M"] {
            let m = usage_err(&["--max-bandwidth", bad]);
            assert!(m.contains("--max-bandwidth"), "{bad}: {m}");
        }
    }

    #[test]
    fn durations_table() {
        let cases: &[(&str, Duration)] = &[
            ("30", Duration::from_secs(30)),
            ("2.5", Duration::from_millis(2500)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1.5h", Duration::from_secs(5400)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("2 minutes", Duration::from_secs(120)),
            ("1h 30m", Duration::from_secs(5400)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (v, want) in cases {
            assert_eq!(parse_duration(v), Ok(*want), "{v:?}");
        }
        for bad in ["", "-1", "-1s", "abc", "5x", "1e400", "nan", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn duration_flags() {
        let o = run(&[
            "-timeout",
            "1m30s",
            "-random-delay=2.5",
            "--retry-wait",
            "500ms",
        ]);
        assert_eq!(o.timeout, Some(Duration::from_secs(90)));
        assert_eq!(o.random_delay, Some(Duration::from_millis(2500)));
        assert_eq!(o.retry_wait, Duration::from_millis(500));
        let o = run(&["-timeout", "0", "-random-delay", "0", "-retry-wait", "0"]);
        assert_eq!(o.timeout, None);
        assert_eq!(o.random_delay, None);
        assert_eq!(o.retry_wait, Duration::ZERO);
        for flag in ["timeout", "random-delay", "retry-wait"] {
            let m = usage_err(&[&format!("--{flag}"), "-3"]);
            assert!(m.contains(&format!("--{flag}")), "{m}");
            let m = usage_err(&[&format!("-{flag}=soon")]);
            assert!(m.contains(&format!("--{flag}")), "{m}");
        }
    }

    #[test]
    fn stall_timeout_flag() {
        assert_eq!(run(&[]).stall_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            run(&["-stall-timeout", "1s"]).stall_timeout,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            run(&["--stall-timeout=90"]).stall_timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(run(&["--stall-timeout", "0"]).stall_timeout, None);
        let m = usage_err(&["--stall-timeout", "soon"]);
        assert!(m.contains("--stall-timeout"), "{m}");
    }

    #[test]
    fn retry() {
        assert_eq!(run(&["-retry", "3"]).retry, 3);
        assert_eq!(run(&["--retry=0"]).retry, 0);
        for bad in ["-1", "x", "1.5", ""] {
            let m = usage_err(&["--retry", bad]);
            assert!(m.contains("--retry"), "{bad}: {m}");
        }
    }

    #[test]
    fn rsync_verbose_table() {
        let cases: &[(&[&str], u8)] = &[
            (&["-rsync-verbose="], 0),
            (&["--rsync-verbose", ""], 0),
            (&["--rsync-verbose", "-v"], 1),
            (&["--rsync-verbose=-v"], 1),
            (&["-rsync-verbose", "-vv"], 2),
            (&["--rsync-verbose=-vv"], 2),
            (&["--rsync-verbose", "-vvv"], 3),
        ];
        for (args, want) in cases {
            assert_eq!(run(args).rsync_verbose, *want, "{args:?}");
        }
        for bad in ["-vvvv", "v", "-q", "1"] {
            let m = usage_err(&["--rsync-verbose", bad]);
            assert!(m.contains("--rsync-verbose"), "{bad}: {m}");
        }
    }

    #[test]
    fn positional() {
        assert_eq!(
            run(&["-retry", "1", "s3://b/m.yml"]).target.as_deref(),
            Some("s3://b/m.yml")
        );
        assert_eq!(
            run(&["./manifest.yml", "--retry=1"]).target.as_deref(),
            Some("./manifest.yml")
        );
        let m = usage_err(&["a.yml", "b.yml"]);
        assert!(m.contains("only one"), "{m}");
        usage_err(&[""]);
    }

    #[test]
    fn argh_errors_become_usage() {
        // A repeated flag: argh refuses it.
        let m = usage_err(&["--retry", "1", "-retry", "2"]);
        assert!(m.contains("retry"), "{m}");
        // A positional where only flags may be
        usage_err(&["--dry-run", "a.yml", "b.yml"]);
    }

    #[test]
    fn usage_lists_every_flag() {
        let u = usage();
        for flag in [
            "--max-bandwidth",
            "--max-band-width",
            "--timeout",
            "--random-delay",
            "--retry ",
            "--retry-wait",
            "--rsync-verbose",
            "--state-dir",
            "--allow-url",
            "--dry-run",
            "--command-timeout",
            "--version",
            "--help",
        ] {
            assert!(u.contains(flag), "usage lacks {flag}");
        }
    }

    #[test]
    fn state_dir_flag() {
        assert_eq!(run(&[]).state_dir, None);
        for args in [
            &["-state-dir", "/var/tmp/st"][..],
            &["--state-dir=/var/tmp/st"],
            &["--state-dir", "/var/tmp/st"],
            &["-state-dir=/var/tmp/st"],
        ] {
            assert_eq!(
                run(args).state_dir.as_deref(),
                Some(std::path::Path::new("/var/tmp/st")),
                "{args:?}"
            );
        }
        let m = usage_err(&["--state-dir", ""]);
        assert!(m.contains("--state-dir"), "{m}");
    }

    #[test]
    fn allow_url_flag_repeats() {
        assert!(run(&[]).allow_url.is_empty());
        let o = run(&[
            "-allow-url",
            "s3://bucket/releases/",
            "--allow-url=HTTPS://Host",
            "--allow-url",
            "file:///srv/app/",
            "m.yml",
        ]);
        assert_eq!(
            o.allow_url.prefixes(),
            ["s3://bucket/releases/", "https://host/", "file:///srv/app/"]
        );
        assert_eq!(o.target.as_deref(), Some("m.yml"));
        for bad in ["/srv/app/", "https://u@h/", "file:///srv/../x/", ""] {
            let m = usage_err(&["--allow-url", bad]);
            assert!(m.contains("--allow-url"), "{bad}: {m}");
        }
    }

    #[test]
    fn dry_run_switch() {
        assert!(!run(&[]).dry_run);
        for args in [
            &["-dry-run"][..],
            &["--dry-run"],
            &["--dry-run=true"],
            &["-dry-run", "-retry", "1", "m.yml"],
            &["m.yml", "--dry-run"],
        ] {
            assert!(run(args).dry_run, "{args:?}");
        }
        assert!(!run(&["-dry-run=false"]).dry_run);
        let o = run(&["--dry-run", "m.yml"]);
        assert_eq!(o.target.as_deref(), Some("m.yml"));
        // `--dry-run` as another flag's value is that value, not the switch.
        let m = usage_err(&["--timeout", "--dry-run"]);
        assert!(m.contains("--timeout"), "{m}");
    }

    #[test]
    fn command_timeout_flag() {
        assert_eq!(run(&[]).command_timeout, None);
        let cases: &[(&[&str], Option<Duration>)] = &[
            (&["-command-timeout", "30"], Some(Duration::from_secs(30))),
            (
                &["--command-timeout", "1m30s"],
                Some(Duration::from_secs(90)),
            ),
            (
                &["--command-timeout=500ms"],
                Some(Duration::from_millis(500)),
            ),
            (&["-command-timeout=2.5"], Some(Duration::from_millis(2500))),
            (&["--command-timeout", "0"], None),
        ];
        for (args, want) in cases {
            assert_eq!(run(args).command_timeout, *want, "{args:?}");
        }
        for bad in ["-1s", "soon", ""] {
            let m = usage_err(&["--command-timeout", bad]);
            assert!(m.contains("--command-timeout"), "{bad}: {m}");
        }
    }

    #[test]
    fn status_subcommand() {
        let status = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::Status(o)) => o,
            other => panic!("{args:?}: expected Status, got {other:?}"),
        };
        assert_eq!(status(&["status"]), StatusOptions::default());
        let o = status(&[
            "status",
            "--brief",
            "-json",
            "/srv/a",
            "-state-dir=/s",
            "/srv/b",
        ]);
        assert!(o.brief && o.json);
        assert_eq!(o.dests, [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
        assert_eq!(o.state_dir, Some(PathBuf::from("/s")));
        assert!(matches!(
            parse(&os(&["status", "--help"])),
            Ok(Command::SubcommandHelp(t)) if t.contains("--brief")
        ));
        usage_err(&["status", "--bogus"]);
        usage_err(&["status", "--state-dir", ""]);
        // a manifest file named status is ./status
        assert_eq!(run(&["./status"]).target.as_deref(), Some("./status"));
    }

    #[test]
    fn rollout_subcommand() {
        let rollout = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::Rollout(o)) => o,
            other => panic!("{args:?}: expected Rollout, got {other:?}"),
        };
        let o = rollout(&["rollout", "https://h/m.yml"]);
        assert_eq!(o.manifest_url, "https://h/m.yml");
        assert_eq!(o.event, "deploy");
        assert_eq!(o.waves, crate::rollout::default_waves());
        assert_eq!(o.bake, Duration::ZERO);
        assert_eq!(o.wave_timeout, Duration::from_secs(600));
        assert_eq!(o.max_failed, crate::rollout::Size::Count(0));
        assert!(o.canary.is_none() && o.tags.is_empty() && !o.dry_run && !o.json);
        let o = rollout(&[
            "rollout",
            "-event=ship",
            "--waves",
            "2,50%",
            "--canary-tag=role=canary",
            "-bake",
            "30s",
            "--wave-timeout=2m",
            "--max-failed",
            "10%",
            "--tag",
            "dc=eu.*",
            "--tag=role=web",
            "--rpc-addr",
            "127.0.0.1:7000",
            "--dry-run",
            "--json",
            "/srv/m.yml",
        ]);
        assert_eq!(o.manifest_url, "/srv/m.yml");
        assert_eq!(o.event, "ship");
        assert_eq!(
            o.waves,
            vec![
                crate::rollout::Size::Count(2),
                crate::rollout::Size::Percent(50)
            ]
        );
        assert_eq!(o.canary.as_ref().map(|c| c.value.as_str()), Some("canary"));
        assert_eq!(o.bake, Duration::from_secs(30));
        assert_eq!(o.wave_timeout, Duration::from_secs(120));
        assert_eq!(o.max_failed, crate::rollout::Size::Percent(10));
        assert_eq!(o.tags.len(), 2);
        assert_eq!(o.rpc_addr.as_deref(), Some("127.0.0.1:7000"));
        assert!(o.dry_run && o.json);
        assert!(matches!(
            parse(&os(&["rollout", "--help"])),
            Ok(Command::SubcommandHelp(t)) if t.contains("--canary-tag")
        ));
        for bad in [
            &["rollout"][..],
            &["rollout", "a", "b"],
            &["rollout", "u", "--waves", "0"],
            &["rollout", "u", "--waves", "1,,2"],
            &["rollout", "u", "--max-failed", "x"],
            &["rollout", "u", "--canary-tag", "role"],
            &["rollout", "u", "--wave-timeout", "0"],
            &["rollout", "u", "--bake", "soon"],
            &["rollout", "u", "--tag", "novalue"],
            &["rollout", "u", "--force"],
        ] {
            match parse(&os(bad)) {
                Err(e @ Error::Usage(_)) => assert_eq!(e.exit_code(), 2),
                other => panic!("{bad:?}: expected a usage error, got {other:?}"),
            }
        }
    }

    #[test]
    fn fleet_status_subcommand() {
        let fleet = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::FleetStatus(o)) => o,
            other => panic!("{args:?}: expected FleetStatus, got {other:?}"),
        };
        assert_eq!(fleet(&["fleet", "status"]), FleetOptions::default());
        let o = fleet(&[
            "fleet",
            "status",
            "-rpc-addr=127.0.0.1:7373",
            "--tag",
            "role=web",
            "--tag=dc=a=b",
            "--node",
            "n1",
            "-node=n2",
            "--timeout",
            "5s",
            "--checksum",
            "ABCDEF",
            "--json",
            "--problems",
        ]);
        assert_eq!(o.rpc_addr.as_deref(), Some("127.0.0.1:7373"));
        assert_eq!(
            o.tags,
            [("role".into(), "web".into()), ("dc".into(), "a=b".into())]
        );
        assert_eq!(o.nodes, ["n1", "n2"]);
        assert_eq!(o.timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.checksum.as_deref(), Some("abcdef"));
        assert!(o.json && o.problems);
        assert!(matches!(
            parse(&os(&["fleet", "status", "-h"])),
            Ok(Command::SubcommandHelp(t)) if t.contains("--checksum")
        ));
        for bad in [
            &["fleet"][..],
            &["fleet", "stat"],
            &["fleet", "status", "extra"],
            &["fleet", "status", "--tag", "novalue"],
            &["fleet", "status", "--checksum", "xyz"],
            &["fleet", "status", "--timeout", "soon"],
            &["fleet", "status", "--brief"],
        ] {
            usage_err(bad);
        }
    }

    #[test]
    fn textfile_dir_flag() {
        assert_eq!(run(&[]).textfile_dir, None);
        assert_eq!(
            run(&["--textfile-dir", "/var/lib/node_exporter", "m.yml"]).textfile_dir,
            Some(PathBuf::from("/var/lib/node_exporter"))
        );
        assert_eq!(
            run(&["-textfile-dir=/t"]).textfile_dir,
            Some(PathBuf::from("/t"))
        );
        usage_err(&["--textfile-dir", " "]);
    }

    #[test]
    fn trusted_key_flag_is_repeatable() {
        const A: &str = "RWTKOxCE232ibYYNKLgoV4BFn7DsbRQOS0xOHQ1xToilceH+JfW+u9z6";
        const B: &str = "RWSjEx7YLJzzt0lkK5ejv9YHzpdUjWtunMfhlxgWI45Y23cIfB/yTR2w";
        assert!(run(&[]).trusted_keys.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let pub_file = dir.path().join("b.pub");
        std::fs::write(
            &pub_file,
            format!("untrusted comment: minisign public key B7F39C2CD81E13A3\n{B}\n"),
        )
        .unwrap();
        let path = pub_file.to_str().unwrap();
        let o = run(&["-trusted-key", A, &format!("--trusted-key={path}")]);
        let ids: Vec<&str> = o.trusted_keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["6DA27DDB84103BCA", "B7F39C2CD81E13A3"]);
        for bad in ["RWnope", "/no/such.pub", ""] {
            let m = usage_err(&["--trusted-key", bad]);
            assert!(m.contains("--trusted-key"), "{bad}: {m}");
        }
    }

    /// The flags argh's own help text shows for `T` (its usage line), each with
    /// whether it takes a value: read apart from `ArgsInfo`, which `Flags` uses.
    fn flags_in_argh_help<T: Raw>() -> Vec<(String, bool)> {
        let help = argh_help::<T>();
        let usage = help.lines().next().unwrap_or_default();
        assert!(usage.starts_with("Usage: "), "{help}");
        let words: Vec<&str> = usage.split_whitespace().collect();
        let mut found = Vec::new();
        for (i, w) in words.iter().enumerate() {
            let w = w.trim_start_matches('[').trim_end_matches(']');
            let Some(name) = w.strip_prefix("--").filter(|n| !n.is_empty()) else {
                continue;
            };
            let takes_value = words.get(i + 1).is_some_and(|v| v.starts_with('<'));
            found.push((name.to_string(), takes_value));
        }
        // Every flag of the Options section is on the usage line.
        let options = help.split("Options:").nth(1).unwrap_or_default();
        for line in options.lines() {
            if let Some(name) = line.trim_start().strip_prefix("--") {
                let name = name.split([',', ' ']).next().unwrap_or_default();
                if name != "help" {
                    assert!(found.iter().any(|(n, _)| n == name), "{name}: {help}");
                }
            }
        }
        found
    }

    /// argh takes `args` once the normaliser has rewritten them for `T`.
    fn argh_takes<T: Raw>(args: &[&str]) -> std::result::Result<(), String> {
        let (_, _, words) = prepare(&os(args), &Flags::of::<T>()).map_err(|e| e.to_string())?;
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        T::from_args(T::COMMAND, &words)
            .map(|_| ())
            .map_err(|e| e.output)
    }

    /// Every flag of `T`'s argh struct is known to the normaliser, with its kind, and
    /// reaches argh in every Go spelling; every alias names a flag that takes a value.
    fn check_flags_of<T: Raw>() {
        let flags = Flags::of::<T>();
        let in_help = flags_in_argh_help::<T>();
        assert!(!in_help.is_empty(), "{:?}", T::COMMAND);
        for (name, takes_value) in &in_help {
            let known_value = flags.values.iter().any(|(n, c)| n == name && c == name);
            let known_switch = flags.switches.contains(&name.as_str());
            assert_eq!(
                (known_value, known_switch),
                (*takes_value, !*takes_value),
                "{:?} --{name}: {flags:?}",
                T::COMMAND
            );
        }
        let listed = flags.values.len() - T::ALIASES.len() + flags.switches.len();
        assert_eq!(listed, in_help.len(), "{:?}: {flags:?}", T::COMMAND);
        for (alias, flag) in T::ALIASES {
            assert!(
                in_help.iter().any(|(n, v)| n == flag && *v),
                "alias {alias} of {flag}"
            );
            assert!(in_help.iter().all(|(n, _)| n != alias), "{alias}");
        }
        // A required positional (the DEST of releases / rollback).
        let positional: Vec<&str> = T::get_args_info()
            .positionals
            .iter()
            .filter(|p| matches!(p.optionality, argh::Optionality::Required))
            .map(|_| "p")
            .collect();
        for (name, _) in &flags.values {
            for args in [
                vec![format!("-{name}"), "1".into()],
                vec![format!("--{name}"), "1".into()],
                vec![format!("-{name}=1")],
                vec![format!("--{name}=1")],
            ] {
                let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
                args.extend(&positional);
                assert_eq!(argh_takes::<T>(&args), Ok(()), "{:?} {args:?}", T::COMMAND);
            }
        }
        for name in &flags.switches {
            for args in [
                format!("-{name}"),
                format!("--{name}"),
                format!("-{name}=true"),
                format!("--{name}=false"),
            ] {
                let mut args = vec![args.as_str()];
                args.extend(&positional);
                assert_eq!(argh_takes::<T>(&args), Ok(()), "{:?} {args:?}", T::COMMAND);
            }
        }
        let unknown = argh_takes::<T>(&["--no-such-flag"]).expect_err("unknown flag");
        assert!(unknown.contains("unknown flag"), "{unknown}");
    }

    #[test]
    fn every_argh_flag_is_known_to_the_normaliser() {
        check_flags_of::<RawArgs>();
        check_flags_of::<RawStatus>();
        check_flags_of::<RawVerify>();
        check_flags_of::<RawReleases>();
        check_flags_of::<RawRollback>();
        check_flags_of::<RawFleet>();
        check_flags_of::<RawRollout>();
        check_flags_of::<RawPack>();
        // the deploy's flags as the normaliser has them, alias included
        let flags = Flags::of::<RawArgs>();
        assert!(flags.values.contains(&("max-band-width", "max-bandwidth")));
        assert_eq!(flags.switches, ["dry-run", "force", "detach"]);
        assert!(flags.version);
        assert!(!Flags::of::<RawStatus>().version);
    }

    #[test]
    fn detach_keeps_the_command_line_without_itself() {
        let o = run(&["-detach", "-retry", "2", "s3://b/m.yml"]);
        assert_eq!(
            o.detach.as_deref(),
            Some(
                &[
                    "--retry".to_string(),
                    "2".into(),
                    "--".into(),
                    "s3://b/m.yml".into()
                ][..]
            )
        );
        // the detached command line parses to the same options, without --detach
        let args: Vec<&str> = o
            .detach
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        let again = run(&args);
        assert_eq!(again, Options { detach: None, ..o });
        // a value or a positional that reads `--detach` is not the switch
        let o = run(&[
            "--state-dir",
            "--detach",
            "--detach=true",
            "--rsync-verbose=",
            "--",
            "--detach",
        ]);
        assert_eq!(
            o.state_dir.as_deref(),
            Some(std::path::Path::new("--detach"))
        );
        assert_eq!(
            o.detach.unwrap(),
            [
                "--state-dir",
                "--detach",
                "--rsync-verbose",
                "",
                "--",
                "--detach"
            ]
        );
        assert_eq!(run(&["--detach=false", "x"]).detach, None);
        assert!(usage_err(&["--detach", "--dry-run", "x"]).contains("--detach"));
    }

    #[test]
    fn version_is_a_flag_of_the_deploy_only() {
        assert_eq!(parse(&os(&["-v"])).unwrap(), Command::Version);
        for sub in [
            &["status"][..],
            &["verify", "/d"],
            &["releases", "/d"],
            &["rollback", "/d"],
            &["fleet", "status"],
        ] {
            for v in ["-v", "--version"] {
                let args: Vec<&str> = sub.iter().copied().chain([v]).collect();
                let m = usage_err(&args);
                assert!(m.contains("unknown flag"), "{args:?}: {m}");
            }
        }
    }

    #[test]
    fn pack_subcommand() {
        let pack = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::Pack(o)) => o,
            other => panic!("{args:?}: expected Pack, got {other:?}"),
        };
        let want = PackOptions {
            dir: "site".into(),
            out: "a.tar.gz".into(),
            excludes: vec!["*.log".into(), "tmp/".into()],
            owner: true,
            manifest: None,
        };
        for args in [
            &[
                "pack",
                "site",
                "-o",
                "a.tar.gz",
                "--exclude",
                "*.log",
                "-exclude=tmp/",
                "--owner",
            ][..],
            &[
                "pack",
                "--output=a.tar.gz",
                "-owner",
                "site",
                "--exclude",
                "*.log",
                "--exclude",
                "tmp/",
            ],
        ] {
            assert_eq!(pack(args), want, "{args:?}");
        }
        let o = pack(&[
            "pack",
            "site",
            "-o",
            "a.tar.zst",
            "--manifest",
            "m.yml",
            "--dest",
            "/srv/app",
            "--dest-mode",
            "0755",
            "--strategy",
            "release",
            "--serial",
            "7",
            "--expires",
            "2030-01-01T00:00:00Z",
            "--src",
            "https://h/a.tar.zst",
        ]);
        assert_eq!(
            o.manifest,
            Some(ManifestOptions {
                path: "m.yml".into(),
                dest: "/srv/app".into(),
                src: Some("https://h/a.tar.zst".into()),
                dest_mode: Some("0755".into()),
                strategy: Some("release".into()),
                serial: Some("7".into()),
                expires: Some("2030-01-01T00:00:00Z".into()),
            })
        );
        for (args, says) in [
            (
                &["pack", "site"][..],
                "-o OUT.tar.gz|OUT.tar.zst is required",
            ),
            (
                &["pack", "site", "-o", "a.tar.gz", "--dest", "/d"],
                "--dest needs --manifest",
            ),
            (
                &["pack", "site", "-o", "a.tar.gz", "--manifest", "m.yml"],
                "--manifest needs --dest",
            ),
            (&["pack", "", "-o", "a.tar.gz"], "pack: DIR is empty"),
            (
                &["pack", "site", "-o", "a.tar.gz", "--bogus"],
                "unknown flag for pack: --bogus",
            ),
        ] {
            match parse(&os(args)) {
                Err(Error::Usage(m)) => assert!(m.contains(says), "{args:?}: {m}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        match parse(&os(&["pack", "--help"])).unwrap() {
            Command::SubcommandHelp(h) => assert!(h.contains("minisign -S"), "{h}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verify_subcommand() {
        let verify = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::Verify(o)) => o,
            other => panic!("{args:?}: expected Verify, got {other:?}"),
        };
        let o = verify(&["verify", "/srv/app"]);
        assert_eq!(o.dest, PathBuf::from("/srv/app"));
        assert!(!o.json);
        assert!(!o.content);
        assert!(verify(&["verify", "--content", "/srv/app"]).content);
        assert!(verify(&["verify", "/srv/app", "-content"]).content);
        assert_eq!(o.state_dir, None);
        for args in [
            &["verify", "--json", "--state-dir", "/s", "/srv/app"][..],
            &["verify", "/srv/app", "-json", "-state-dir=/s"],
            &["verify", "-json=true", "--state-dir=/s", "--", "/srv/app"],
        ] {
            let o = verify(args);
            assert_eq!(o.dest, PathBuf::from("/srv/app"), "{args:?}");
            assert!(o.json, "{args:?}");
            assert_eq!(o.state_dir, Some(PathBuf::from("/s")), "{args:?}");
        }
        assert_eq!(
            verify(&["verify", "--", "-odd"]).dest,
            PathBuf::from("-odd")
        );
        for help in ["-h", "-help", "--help"] {
            assert_eq!(
                parse(&os(&["verify", help])).unwrap(),
                Command::SubcommandHelp(verify_usage())
            );
        }
        let cases: &[(&[&str], &str)] = &[
            (&["verify"], "verify needs a DEST directory"),
            (
                &["verify", "a", "b"],
                "verify takes one DEST (extra argument \"b\")",
            ),
            (&["verify", ""], "verify: DEST is empty"),
            (
                &["verify", "--state-dir"],
                "flag needs an argument: -state-dir",
            ),
            (
                &["verify", "--state-dir", " ", "/d"],
                "invalid value \" \" for flag --state-dir: expected a directory path",
            ),
            (
                &["verify", "--brief", "/d"],
                "unknown flag for verify: --brief (see stretcher verify --help)",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(usage_err(args), *want, "{args:?}");
        }
    }

    #[test]
    fn releases_and_rollback_subcommands() {
        let releases = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::Releases(o)) => o,
            other => panic!("{args:?}: expected Releases, got {other:?}"),
        };
        let rollback = |args: &[&str]| match parse(&os(args)) {
            Ok(Command::Rollback(o)) => o,
            other => panic!("{args:?}: expected Rollback, got {other:?}"),
        };
        assert_eq!(
            releases(&["releases", "/srv/app"]),
            ReleasesOptions {
                dest: PathBuf::from("/srv/app"),
                state_dir: None,
            }
        );
        for args in [
            &["releases", "/srv/app", "--state-dir", "/s"][..],
            &["releases", "-state-dir=/s", "/srv/app"],
            &["releases", "/srv/app", "-state-dir", "/s"],
        ] {
            assert_eq!(
                releases(args),
                ReleasesOptions {
                    dest: PathBuf::from("/srv/app"),
                    state_dir: Some(PathBuf::from("/s")),
                },
                "{args:?}"
            );
        }
        assert_eq!(rollback(&["rollback", "/srv/app"]).to, None);
        for args in [
            &["rollback", "--to", "ID", "--state-dir", "/s", "/srv/app"][..],
            &["rollback", "/srv/app", "-to=ID", "-state-dir=/s"],
            &["rollback", "--to=ID", "/srv/app", "--state-dir=/s"],
        ] {
            assert_eq!(
                rollback(args),
                RollbackOptions {
                    dest: PathBuf::from("/srv/app"),
                    to: Some("ID".into()),
                    state_dir: Some(PathBuf::from("/s")),
                },
                "{args:?}"
            );
        }
        for (name, words) in [("releases", &["--state-dir"][..]), ("rollback", &["--to"])] {
            for help in ["-h", "-help", "--help"] {
                let text = match parse(&os(&[name, help])) {
                    Ok(Command::SubcommandHelp(t)) => t,
                    other => panic!("{name} {help}: {other:?}"),
                };
                assert!(
                    text.starts_with(&format!("Usage: stretcher {name} ")),
                    "{text}"
                );
                for w in words {
                    assert!(text.contains(w), "{name}: {text}");
                }
            }
            let m = usage_err(&[name]);
            assert!(
                m.starts_with(&format!("{name}: Required positional")),
                "{m}"
            );
            assert_eq!(
                usage_err(&[name, "/d", "--json"]),
                format!("unknown flag for {name}: --json (see stretcher {name} --help)")
            );
            assert_eq!(usage_err(&[name, " "]), format!("{name}: DEST is empty"));
            let m = usage_err(&[name, "/d", "--state-dir", ""]);
            assert!(m.contains("--state-dir"), "{m}");
            let m = usage_err(&[name, "/d", "/e"]);
            assert!(m.starts_with(&format!("{name}: ")), "{m}");
        }
    }

    #[test]
    fn outputs() {
        let o = Output::stderr("stretcher verify: no", 2);
        assert_eq!(
            (o.stdout.as_str(), o.stderr.as_str()),
            ("", "stretcher verify: no\n")
        );
        assert_eq!((o.code, o.code_if_unwritten), (2, 1));
        let o = Output::stdout("a\n", 0);
        assert_eq!(
            (o.stdout.as_str(), o.stderr.as_str(), o.code),
            ("a\n", "", 0)
        );
        let o = Output::usage(&Error::Usage("unknown flag: -x".into()));
        assert_eq!(
            o.stderr,
            "stretcher: unknown flag: -x\nTry 'stretcher --help' for more information.\n"
        );
        assert_eq!(o.code, 2);
    }

    fn catch_up(args: &[&str]) -> CatchUpOptions {
        let mut argv = vec!["catch-up"];
        argv.extend_from_slice(args);
        match parse(&os(&argv)) {
            Ok(Command::CatchUp(o)) => o,
            other => panic!("{args:?}: expected CatchUp, got {other:?}"),
        }
    }

    #[test]
    fn catch_up_flags() {
        let o = catch_up(&[]);
        assert_eq!(o.quorum, DEFAULT_QUORUM);
        assert_eq!((o.rpc_addr, o.query_timeout), (None, None));
        assert!(o.tags.is_empty());
        assert_eq!(o.deploy, Options::default());
        let key = "RWTKOxCE232ibYYNKLgoV4BFn7DsbRQOS0xOHQ1xToilceH+JfW+u9z6";
        let o = catch_up(&[
            "-tag=role=web",
            "--tag",
            "dc=eu-.*",
            "--quorum",
            "3",
            "-rpc-addr",
            "127.0.0.1:7373",
            "--query-timeout=5s",
            "--trusted-key",
            key,
            "--allow-url",
            "https://releases.example.com/",
            "-state-dir",
            "/var/lib/x",
            "--timeout",
            "1m",
            "--dry-run",
            "-max-band-width=1M",
        ]);
        assert_eq!(
            o.tags,
            [
                ("role".to_string(), "web".to_string()),
                ("dc".to_string(), "eu-.*".to_string())
            ]
        );
        assert_eq!(o.quorum, 3);
        assert_eq!(o.rpc_addr.as_deref(), Some("127.0.0.1:7373"));
        assert_eq!(o.query_timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.deploy.trusted_keys.len(), 1);
        assert!(!o.deploy.allow_url.is_empty());
        assert_eq!(o.deploy.state_dir, Some(PathBuf::from("/var/lib/x")));
        assert_eq!(o.deploy.timeout, Some(Duration::from_secs(60)));
        assert_eq!(o.deploy.max_bandwidth, Some(1_000_000));
        assert!(o.deploy.dry_run);
        assert_eq!(o.deploy.target, None);

        for (args, needle) in [
            (&["--quorum", "0"][..], "--quorum"),
            (&["--quorum", "-1"], "--quorum"),
            (&["--tag", "role"], "--tag"),
            (&["--rpc-addr", " "], "--rpc-addr"),
            (&["--retry", "x"], "--retry"),
            (&["--trusted-key", "nope"], "--trusted-key"),
            (&["https://example.com/m.yml"], "takes no manifest URL"),
            (&["--detach"], "unknown flag for catch-up"),
        ] {
            let mut argv = vec!["catch-up"];
            argv.extend_from_slice(args);
            let m = usage_err(&argv);
            assert!(m.contains(needle), "{args:?}: {m}");
        }
        assert!(matches!(
            parse(&os(&["catch-up", "--help"])),
            Ok(Command::SubcommandHelp(t)) if t.contains("--quorum")
        ));
    }

    /// Every flag of the deploy is a flag of catch-up too (the two argh structs
    /// must list the same deploy flags; `--detach` hands a deploy to the
    /// background, which a catch-up run does not do).
    #[test]
    fn catch_up_has_every_deploy_flag() {
        let deploy = Flags::of::<RawArgs>();
        let catch_up = Flags::of::<RawCatchUp>();
        for (name, canonical) in &deploy.values {
            assert!(
                catch_up.values.contains(&(name, canonical)),
                "--{name} is not a flag of catch-up"
            );
        }
        for name in &deploy.switches {
            assert!(
                *name == "detach" || catch_up.switches.contains(name),
                "--{name} is not a flag of catch-up"
            );
        }
    }
}
