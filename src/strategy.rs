//! `sync_strategy` (SPEC §6, §14): the name of how the unpacked tree reaches `dest`,
//! as manifests, records and indexes spell it. A leaf: what each strategy does is the
//! `land` seam, which is the only place that decides by it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the unpacked tree reaches `dest` (the manifest's `sync_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `rsync -a --delete` semantics (the default).
    #[default]
    Rsync,
    /// Rename the unpacked tree onto an absent or empty `dest`.
    Mv,
    /// Unpack into a new release directory and switch the `dest` symlink to it (SPEC §14).
    Release,
}

impl Strategy {
    /// Every strategy, in the order the manifest's error message names them.
    pub const ALL: [Strategy; 3] = [Strategy::Rsync, Strategy::Mv, Strategy::Release];

    /// The manifest's spelling of a strategy; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name as manifests, records and indexes spell it.
    pub fn as_str(self) -> &'static str {
        // In the order of the variants (`self as usize`).
        const NAMES: [&str; 3] = ["rsync", "mv", "release"];
        NAMES[self as usize]
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_none() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), s);
        }
        assert_eq!(Strategy::parse("bogus"), None);
        assert_eq!(Strategy::parse("Rsync"), None);
        assert_eq!(Strategy::default(), Strategy::Rsync);
    }
}
