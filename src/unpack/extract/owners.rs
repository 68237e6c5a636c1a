//! The owner an entry gets when owners are preserved (running as root): its user and
//! group NAME when it exists on this host, else the archive's numeric id — as GNU tar
//! does. Each name is looked up once per unpack.
//!
//! Never changes an owner itself: it only answers which one.

use std::collections::HashMap;

use crate::Result;

use super::super::errors::{fail, fail_io};
use super::super::gnu::PaxInfo;

/// The user and group name caches of one unpack.
#[derive(Default)]
pub(super) struct Owners {
    users: HashMap<Vec<u8>, Option<u32>>,
    groups: HashMap<Vec<u8>, Option<u32>>,
}

impl Owners {
    /// (uid, gid) for the member with header `h` and pax records `pax`: the pax
    /// `uname` / `gname` before the header's names, the header's ids when a name is
    /// missing or unknown here.
    pub(super) fn of(&mut self, h: &tar::Header, pax: &PaxInfo, raw: &[u8]) -> Result<(u32, u32)> {
        let uid = h.uid().map_err(|e| fail_io(raw, "uid field", e))?;
        let gid = h.gid().map_err(|e| fail_io(raw, "gid field", e))?;
        let uname = pax.uname.as_deref().or(h.username_bytes());
        let gname = pax.gname.as_deref().or(h.groupname_bytes());
        let uid = match uname.and_then(|n| cached(&mut self.users, n, user_by_name)) {
            Some(id) => id,
            None => u32::try_from(uid).map_err(|_| fail(raw, "uid out of range"))?,
        };
        let gid = match gname.and_then(|n| cached(&mut self.groups, n, group_by_name)) {
            Some(id) => id,
            None => u32::try_from(gid).map_err(|_| fail(raw, "gid out of range"))?,
        };
        Ok((uid, gid))
    }
}

fn cached(
    cache: &mut HashMap<Vec<u8>, Option<u32>>,
    name: &[u8],
    lookup: fn(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    if let Some(id) = cache.get(name) {
        return *id;
    }
    let id = std::str::from_utf8(name).ok().and_then(lookup);
    cache.insert(name.to_vec(), id);
    id
}

fn user_by_name(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn group_by_name(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}
