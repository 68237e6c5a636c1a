//! Root among other local users (SPEC §17): what another account on the host, a
//! hook, or an old signed manifest can do to a deploy that runs as root. Each attack
//! is one test. The other user is a real account the test adds (`useradd`, see
//! `util::TestUser`) and removes; its commands run through `setpriv`, and whatever
//! the test starts as that user is ended by pid before the account goes.
//!
//! - a NUL in `commands.env` is a manifest error, before any hook runs.

use crate::signing::{manifest_key, record};
use crate::util::*;

#[test]
fn nul_in_commands_env_is_a_manifest_error() {
    let s = Scratch::new();
    let marker = s.path().join("pre-ran");
    for env in ["GREETING: \"a\\0b\"", "\"A\\0B\": x"] {
        let m = s.manifest(
            "m.yml",
            &format!(
                "commands:\n  env:\n    {env}\n  pre:\n    - touch {}\n",
                marker.display()
            ),
        );
        let url = format!("file://{}", m.display());
        let run = s.stretcher().arg(&m).run();
        run.assert_fail().assert_log("commands.env");
        assert!(!marker.exists(), "a hook ran");
        let rec = record(&s, &manifest_key(&url));
        assert_eq!(rec["failed_step"], "manifest", "{rec:#}");
    }
}
