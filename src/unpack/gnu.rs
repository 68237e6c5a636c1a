//! The layer where GNU tar's readings are added to tar-rs's: the pax records this
//! crate reads itself (sub-second mtimes, owner names, the sparse records), a member's
//! real name and type (pax sparse names, V7 trailing-slash and `D` dump directories),
//! sparse layouts (old-GNU `S`, pax 0.0 / 0.1, and the pax 1.0 map at the start of the
//! member's data), and GNU base-256 header mtimes (negative ones too).
//!
//! Readings of headers and member bytes only: never touches the filesystem.

use std::io::{self, Read};

use filetime::FileTime;
use tar::EntryType;

use crate::Result;

use super::errors::{corrupt, fail};
use super::UnpackOptions;

/// Sparse map entries a pax 1.0 member may declare (each costs 16 bytes of memory).
const MAX_SPARSE_CHUNKS: u64 = 1 << 20;

/// What this module reads from a member's pax records (tar-rs applies `path`,
/// `linkpath`, `size`, `uid` and `gid` itself).
#[derive(Debug, Default)]
pub(super) struct PaxInfo {
    pub(super) mtime: Option<FileTime>,
    pub(super) uname: Option<Vec<u8>>,
    pub(super) gname: Option<Vec<u8>>,
    /// `GNU.sparse.name` (pax sparse 0.1, 1.0): the member's real name.
    pub(super) sparse_name: Option<Vec<u8>>,
    pub(super) sparse_major: Option<u64>,
    /// The (offset, length) map of 0.0 (`GNU.sparse.offset` / `numbytes` pairs) or
    /// 0.1 (`GNU.sparse.map`).
    pub(super) sparse_map: Vec<(u64, u64)>,
}

impl PaxInfo {
    pub(super) fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        opts: &UnpackOptions,
    ) -> Result<PaxInfo> {
        let mut info = PaxInfo::default();
        let Some(exts) = entry.pax_extensions().map_err(|e| corrupt(opts, &e))? else {
            return Ok(info);
        };
        let mut offset: Option<u64> = None;
        for ext in exts {
            // tar-rs takes a malformed record as the end of the header, as GNU tar
            // does after its warning: the member is read with what came before.
            let Ok(ext) = ext else { break };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            match ext.key_bytes() {
                b"mtime" => info.mtime = parse_pax_time(value),
                b"uname" => info.uname = Some(value.to_vec()),
                b"gname" => info.gname = Some(value.to_vec()),
                b"GNU.sparse.name" => info.sparse_name = Some(value.to_vec()),
                b"GNU.sparse.major" => info.sparse_major = number(),
                b"GNU.sparse.offset" => offset = number(),
                b"GNU.sparse.numbytes" => {
                    if let (Some(o), Some(n)) = (offset.take(), number()) {
                        info.sparse_map.push((o, n));
                    }
                }
                b"GNU.sparse.map" => {
                    let numbers: Vec<u64> = std::str::from_utf8(value)
                        .unwrap_or("")
                        .split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect();
                    info.sparse_map = numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// The member's name as raw bytes: sparse pax 0.1 / 1.0 members are stored under
/// `GNUSparseFile.N/NAME`, the real name is a pax record.
pub(super) fn member_name<R: Read>(entry: &tar::Entry<'_, R>, pax: &PaxInfo) -> Vec<u8> {
    match &pax.sparse_name {
        Some(name) => name.clone(),
        None => entry.path_bytes().into_owned(),
    }
}

/// The member's type as GNU tar reads it: old (V7 / BSD) archives mark directories by
/// a trailing slash only, and a GNU dump directory (`D`) is a directory whose data (the
/// names it held when dumped, for incremental restores) tar-rs skips.
pub(super) fn member_kind(kind: EntryType, raw: &[u8]) -> EntryType {
    if (matches!(kind, EntryType::Regular | EntryType::Continuous) && raw.ends_with(b"/"))
        || kind.as_byte() == b'D'
    {
        EntryType::Directory
    } else {
        kind
    }
}

/// The bytes a chunk's data is aligned to in the member: GNU tar reads each chunk
/// from a block of its own.
pub(super) const BLOCK: u64 = 512;

/// A sparse member's layout, as GNU tar writes it: each chunk (offset, length) in
/// map order, written at its offset (a chunk of length 0 truncates the file there),
/// its data read from the next block boundary of the member's data.
pub(super) struct Sparse {
    /// The file's size once the chunks are written (GNU tar does not use the
    /// archive's "real size" for it).
    pub(super) size: u64,
    pub(super) chunks: Vec<(u64, u64)>,
}

/// The sparse layout of a member, if it is sparse: old-GNU (`S`, map parsed by
/// tar-rs), pax 0.0 / 0.1 (map in pax records) or pax 1.0 (map at the start of the
/// data, read here). `None` for a plain file.
///
/// As GNU tar, the map is taken as it is (chunks in any order), and data the map
/// does not use is skipped; a map that needs more data than the member holds (GNU
/// tar would read the next headers as file data) is refused.
pub(super) fn sparse_layout<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    pax: &PaxInfo,
    raw: &[u8],
) -> Result<Option<Sparse>> {
    let bad = |msg: String| fail(raw, format!("sparse map: {msg}"));
    let (chunks, stored) = if let Some(map) = entry.sparse_map() {
        // tar-rs hands over only the chunks' data, each but the last whole blocks.
        (map.to_vec(), map.iter().map(|&(_, l)| l).sum())
    } else if pax.sparse_major.is_some_and(|major| major > 0) {
        let stored = entry.size();
        let (chunks, map_len) = read_sparse_map_1_0(entry, stored).map_err(bad)?;
        (chunks, stored - map_len)
    } else if !pax.sparse_map.is_empty() {
        (pax.sparse_map.clone(), entry.size())
    } else {
        return Ok(None);
    };
    let mut size = 0u64;
    let mut used = 0u64;
    for &(offset, len) in &chunks {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| {
                bad(format!(
                    "a chunk at {offset} ends past the largest file size"
                ))
            })?;
        if len == 0 {
            size = offset;
            continue;
        }
        size = size.max(end);
        used = chunk_start(used)
            .and_then(|start| start.checked_add(len))
            .filter(|&u| u <= stored)
            .ok_or_else(|| {
                bad(format!(
                    "the map needs more data than the member holds ({stored} bytes; each chunk's data starts at a block boundary)"
                ))
            })?;
    }
    Ok(Some(Sparse { size, chunks }))
}

/// Where the next chunk's data starts, `used` bytes into the member's data.
pub(super) fn chunk_start(used: u64) -> Option<u64> {
    used.checked_next_multiple_of(BLOCK)
}

/// Reads a pax sparse 1.0 map from the start of the member's data: decimal numbers
/// one per line (the count, then offset / length pairs), padded with NULs to a whole
/// block. Returns the map and the bytes it took.
fn read_sparse_map_1_0(
    data: &mut impl Read,
    stored: u64,
) -> std::result::Result<(Vec<(u64, u64)>, u64), String> {
    let mut used = 0u64;
    let mut line = Vec::new();
    let mut next = |used: &mut u64| -> std::result::Result<u64, String> {
        line.clear();
        loop {
            let mut b = [0u8; 1];
            if *used >= stored || data.read(&mut b).map_err(|e| e.to_string())? == 0 {
                return Err("the map is cut short".into());
            }
            *used += 1;
            if b[0] == b'\n' {
                break;
            }
            if !b[0].is_ascii_digit() || line.len() >= 20 {
                return Err("the map holds something other than decimal numbers".into());
            }
            line.push(b[0]);
        }
        std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| "a map number is empty or too large".to_string())
    };
    let count = next(&mut used)?;
    if count > MAX_SPARSE_CHUNKS {
        return Err(format!("{count} chunks is more than {MAX_SPARSE_CHUNKS}"));
    }
    let mut map = Vec::new();
    for _ in 0..count {
        let offset = next(&mut used)?;
        let len = next(&mut used)?;
        map.push((offset, len));
    }
    let pad = used.next_multiple_of(BLOCK) - used;
    if used + pad > stored {
        return Err("the map is cut short".into());
    }
    io::copy(&mut data.take(pad), &mut io::sink()).map_err(|e| e.to_string())?;
    Ok((map, used + pad))
}

/// The header's mtime in seconds; GNU base-256 fields may be negative (1969, 1901).
pub(super) fn header_mtime(h: &tar::Header) -> std::result::Result<i64, String> {
    let field = &h.as_old().mtime;
    if field[0] & 0x80 == 0 {
        let secs = h.mtime().map_err(|e| format!("mtime field: {e}"))?;
        return Ok(i64::try_from(secs).unwrap_or(i64::MAX));
    }
    // Base-256: big-endian two's complement, bit 6 of the first byte the sign.
    let negative = field[0] & 0x40 != 0;
    let mut value: i128 = if negative { -1 } else { 0 };
    for (i, &b) in field.iter().enumerate() {
        let b = if i == 0 {
            if negative {
                b | 0x80
            } else {
                b & 0x7f
            }
        } else {
            b
        };
        value = (value << 8) | i128::from(b);
        if !(i64::MIN as i128..=i64::MAX as i128).contains(&value) && i > 0 {
            return Err("mtime field: out of range".into());
        }
    }
    i64::try_from(value).map_err(|_| "mtime field: out of range".to_string())
}

/// A pax `mtime` record: decimal seconds with an optional fraction (`1700000000.5`,
/// `-1.25`). `None` when malformed (the header's whole seconds are used instead).
pub(super) fn parse_pax_time(value: &[u8]) -> Option<FileTime> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        Some(FileTime::from_unix_time(secs, nanos))
    } else if nanos == 0 {
        Some(FileTime::from_unix_time(-secs, 0))
    } else {
        Some(FileTime::from_unix_time(-secs - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_with_mtime(field: [u8; 12]) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().mtime = field;
        h
    }

    #[test]
    fn base256_mtimes_may_be_negative() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[8..].copy_from_slice(&1_700_000_000u32.to_be_bytes());
        assert_eq!(header_mtime(&header_with_mtime(f)), Ok(1_700_000_000));
        // -1 and -2^31 - 1 (1901) in GNU's two's complement form
        assert_eq!(header_mtime(&header_with_mtime([0xff; 12])), Ok(-1));
        let mut f = [0xff; 12];
        f[7..].copy_from_slice(&[0xff, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(header_mtime(&header_with_mtime(f)), Ok(-(1 << 31) - 1));
        // octal, as before
        let mut h = tar::Header::new_gnu();
        h.set_mtime(12345);
        assert_eq!(header_mtime(&h), Ok(12345));
        // beyond i64
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[2] = 0x01;
        assert!(header_mtime(&header_with_mtime(f)).is_err());
    }

    #[test]
    fn pax_1_0_sparse_maps() {
        let mut data = b"2\n0\n5\n1048576\n3\n".to_vec();
        let map_len = data.len();
        data.resize(512, 0);
        data.extend_from_slice(b"hellotail");
        let (map, used) = read_sparse_map_1_0(&mut &data[..], data.len() as u64).unwrap();
        assert_eq!(map, vec![(0, 5), (1_048_576, 3)]);
        assert_eq!(used, 512);
        assert!(map_len < 512);
        for bad in [
            &b"2\n0\n5\n"[..],
            b"1\nx\n1\n",
            b"",
            b"99999999999999999999999\n",
        ] {
            assert!(read_sparse_map_1_0(&mut &bad[..], 4096).is_err(), "{bad:?}");
        }
        let huge = format!("{}\n", MAX_SPARSE_CHUNKS + 1);
        assert!(read_sparse_map_1_0(&mut huge.as_bytes(), 4096).is_err());
        // the map may not run past the member's data
        assert!(read_sparse_map_1_0(&mut &b"1\n0\n1\n"[..], 4).is_err());
    }
    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some(FileTime::from_unix_time(1_700_000_000, 123_456_789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some(FileTime::from_unix_time(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12"), Some(FileTime::from_unix_time(12, 0)));
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(FileTime::from_unix_time(-2, 750_000_000))
        );
        assert_eq!(
            parse_pax_time(b"1.1234567891"),
            Some(FileTime::from_unix_time(1, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b".5"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
