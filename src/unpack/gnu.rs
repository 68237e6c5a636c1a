//! The layer where GNU tar's readings are added to tar-rs's: the pax records this
//! crate reads itself (sub-second mtimes, owner names, the sparse records) and the
//! values of every record GNU tar decodes, checked as it checks them (a malformed
//! one, on which GNU tar fails, refuses the member; global headers' records too), a
//! member's real name and type (pax sparse names, V7 trailing-slash and `D` dump
//! directories), sparse layouts (old-GNU `S`, pax 0.0 / 0.1, and the pax 1.0 map at
//! the start of the member's data) as GNU tar writes them, and GNU base-256 header
//! mtimes (negative ones too).
//!
//! Readings of headers and member bytes only: never touches the filesystem.

use std::io::{self, Read};

use filetime::FileTime;
use tar::EntryType;

use crate::log::shown;
use crate::Result;

use super::errors::{corrupt, fail, fail_io, Why};
use super::UnpackOptions;

/// Sparse map entries a pax 1.0 member may declare (each costs 16 bytes of memory).
const MAX_SPARSE_CHUNKS: u64 = 1 << 20;

/// What this module reads from a member's pax records (tar-rs applies `path`,
/// `linkpath`, `size`, `uid` and `gid` itself; their values are checked here).
#[derive(Debug, Default)]
pub(super) struct PaxInfo {
    pub(super) mtime: Option<FileTime>,
    pub(super) uname: Option<Vec<u8>>,
    pub(super) gname: Option<Vec<u8>>,
    /// `GNU.sparse.name` (pax sparse 0.1, 1.0): the member's real name.
    pub(super) sparse_name: Option<Vec<u8>>,
    /// `GNU.sparse.major`: above 0, the map is at the start of the data (1.0).
    pub(super) sparse_major: u64,
    /// The (offset, length) map of 0.0 (`GNU.sparse.offset` / `numbytes` pairs) or
    /// 0.1 (`GNU.sparse.map`), at most `GNU.sparse.numblocks` chunks.
    pub(super) sparse_map: Vec<(u64, u64)>,
}

impl PaxInfo {
    /// The member's pax records, their values checked as GNU tar decodes them: a
    /// malformed record or value, on which GNU tar fails (exit status 2), refuses the
    /// member.
    pub(super) fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        opts: &UnpackOptions,
    ) -> Result<PaxInfo> {
        let name = entry.path_bytes().into_owned();
        let mut info = PaxInfo::default();
        let Some(exts) = entry.pax_extensions().map_err(|e| corrupt(opts, e))? else {
            return Ok(info);
        };
        let mut records = PaxRecords::default();
        for ext in exts {
            let ext = ext.map_err(|e| fail_io(&name, "pax header", e))?;
            records
                .decode(&mut info, ext.key_bytes(), ext.value_bytes())
                .map_err(|msg| fail(&name, format!("pax header: {msg}")))?;
        }
        Ok(info)
    }
}

/// A pax global header (`g`): its records are ignored (SPEC §7), but read as GNU tar
/// reads them, a malformed one refusing the archive as it fails GNU tar.
pub(super) fn check_global_header<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    opts: &UnpackOptions,
) -> Result<()> {
    let name = entry.path_bytes().into_owned();
    let mut data = Vec::new();
    entry.read_to_end(&mut data).map_err(|e| corrupt(opts, e))?;
    for ext in tar::PaxExtensions::new(&data) {
        ext.map_err(|e| fail_io(&name, "pax global header", e))?;
    }
    Ok(())
}

/// The state of one pax header's sparse records as GNU tar keeps it.
#[derive(Default)]
struct PaxRecords {
    /// `GNU.sparse.numblocks`: how many chunks the map may hold.
    numblocks: u64,
    /// `GNU.sparse.offset` waiting for its `numbytes` (pax sparse 0.0).
    offset: u64,
}

/// The largest `off_t`, `uid_t` / `gid_t` and `unsigned` GNU tar accepts.
const OFF_MAX: u64 = i64::MAX as u64;
const ID_MAX: u64 = u32::MAX as u64;

impl PaxRecords {
    /// One record, as GNU tar's decoder for its keyword reads it (`xhdr_tab`); an
    /// unknown keyword is ignored (GNU tar warns).
    fn decode(
        &mut self,
        info: &mut PaxInfo,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<(), String> {
        let number = |max: u64| pax_number(key, value, max);
        match key {
            b"mtime" => info.mtime = Some(pax_time(key, value)?),
            b"atime" | b"ctime" => {
                pax_time(key, value)?;
            }
            b"uid" | b"gid" => {
                number(ID_MAX)?;
            }
            b"size" | b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                number(OFF_MAX)?;
            }
            b"uname" => info.uname = Some(value.to_vec()),
            b"gname" => info.gname = Some(value.to_vec()),
            b"GNU.sparse.name" => info.sparse_name = Some(value.to_vec()),
            b"GNU.sparse.major" => info.sparse_major = number(ID_MAX)?,
            b"GNU.sparse.minor" => {
                number(ID_MAX)?;
            }
            b"GNU.sparse.numblocks" => {
                let n = number(u64::MAX)?;
                if n > MAX_SPARSE_CHUNKS {
                    return Err(format!(
                        "{n} sparse chunks is more than {MAX_SPARSE_CHUNKS}"
                    ));
                }
                self.numblocks = n;
                info.sparse_map.clear();
            }
            b"GNU.sparse.offset" => {
                let offset = number(OFF_MAX)?;
                self.room(info, key, value)?;
                self.offset = offset;
            }
            b"GNU.sparse.numbytes" => {
                let len = number(OFF_MAX)?;
                self.room(info, key, value)?;
                info.sparse_map
                    .push((std::mem::take(&mut self.offset), len));
            }
            b"GNU.sparse.map" => {
                info.sparse_map.clear();
                let numbers = pax_map(value)?;
                for pair in numbers.chunks_exact(2) {
                    self.room(info, key, value)?;
                    info.sparse_map.push((pair[0], pair[1]));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// GNU tar's "excess" check: the map holds at most `GNU.sparse.numblocks` chunks.
    fn room(&self, info: &PaxInfo, key: &[u8], value: &[u8]) -> std::result::Result<(), String> {
        if (info.sparse_map.len() as u64) < self.numblocks {
            Ok(())
        } else {
            Err(format!(
                "malformed extended header: excess {}={}",
                shown(key),
                shown(value)
            ))
        }
    }
}

/// A pax value as GNU tar's C code sees it: up to its first NUL.
fn c_str(value: &[u8]) -> &[u8] {
    value.split(|&b| b == 0).next().unwrap_or_default()
}

/// The leading decimal digits of `text` as a number (`None` when it overflows) and
/// how many digits there are.
fn leading_number(text: &[u8]) -> (Option<u64>, usize) {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let value = text[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    (value, digits)
}

/// A numeric pax value (`uid`, `size`, `GNU.sparse.offset`...) as GNU tar's
/// `decode_num` reads it: decimal digits only (an optional `-` when the range allows
/// it), nothing after them, at most `max`.
fn pax_number(key: &[u8], value: &[u8], max: u64) -> std::result::Result<u64, String> {
    let text = c_str(value);
    let invalid = || {
        format!(
            "malformed extended header: invalid {}={}",
            shown(key),
            shown(value)
        )
    };
    // `-0` is 0 for GNU tar (strtoimax) when the range is that of a signed type.
    let (negative, digits_at) = match text.first() {
        Some(b'-') if max <= i64::MAX as u64 => (true, 1),
        _ => (false, 0),
    };
    let (n, digits) = leading_number(&text[digits_at..]);
    if digits == 0 || digits_at + digits != text.len() {
        return Err(invalid());
    }
    match n {
        Some(0) => Ok(0),
        Some(n) if !negative && n <= max => Ok(n),
        _ => Err(format!(
            "extended header {}={} is out of range 0..{max}",
            shown(key),
            shown(value)
        )),
    }
}

/// `GNU.sparse.map` (pax sparse 0.1) as GNU tar's `sparse_map_decoder` reads it:
/// comma-separated decimal numbers, an even count of them.
fn pax_map(value: &[u8]) -> std::result::Result<Vec<u64>, String> {
    let text = c_str(value);
    let mut numbers = Vec::new();
    let mut rest = text;
    loop {
        let (n, digits) = leading_number(rest);
        if digits == 0 {
            return Err(format!(
                "malformed extended header: invalid GNU.sparse.map={}",
                shown(value)
            ));
        }
        match n.filter(|&n| n <= OFF_MAX) {
            Some(n) => numbers.push(n),
            None => {
                return Err(format!(
                    "extended header GNU.sparse.map={} is out of range 0..{OFF_MAX}",
                    shown(value)
                ))
            }
        }
        match rest.get(digits) {
            None => break,
            Some(b',') => rest = &rest[digits + 1..],
            Some(&c) => {
                return Err(format!(
                    "malformed extended header: invalid GNU.sparse.map: unexpected delimiter {}",
                    shown(&[c])
                ))
            }
        }
    }
    if numbers.len() % 2 != 0 {
        return Err(
            "malformed extended header: invalid GNU.sparse.map: odd number of values".into(),
        );
    }
    Ok(numbers)
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
    } else if pax.sparse_major > 0 {
        let stored = entry.size();
        let (chunks, map_len) =
            read_sparse_map_1_0(entry, stored).map_err(|why| why.within("sparse map").of(raw))?;
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
) -> std::result::Result<(Vec<(u64, u64)>, u64), Why> {
    let mut used = 0u64;
    let mut line = Vec::new();
    let mut next = |used: &mut u64| -> std::result::Result<u64, Why> {
        line.clear();
        loop {
            let mut b = [0u8; 1];
            if *used >= stored || data.read(&mut b).map_err(Why::said)? == 0 {
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
            .ok_or_else(|| Why::from("a map number is empty or too large"))
    };
    let count = next(&mut used)?;
    if count > MAX_SPARSE_CHUNKS {
        return Err(format!("{count} chunks is more than {MAX_SPARSE_CHUNKS}").into());
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
    io::copy(&mut data.take(pad), &mut io::sink()).map_err(Why::said)?;
    Ok((map, used + pad))
}

/// The header's mtime in seconds; GNU base-256 fields may be negative (1969, 1901).
pub(super) fn header_mtime(h: &tar::Header) -> std::result::Result<i64, Why> {
    let field = &h.as_old().mtime;
    if field[0] & 0x80 == 0 {
        let secs = h.mtime().map_err(|e| Why::io("mtime field", e))?;
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
    i64::try_from(value).map_err(|_| Why::from("mtime field: out of range"))
}

/// A pax time (`mtime`, `atime`, `ctime`) as GNU tar's `decode_time` reads it:
/// decimal seconds, an optional `-`, an optional fraction (digits past the ninth
/// only round a negative time down); whatever follows the number is ignored (Go's
/// `mtime=999xxx9324.43` is 999). No digit, or seconds out of range, is an error.
pub(super) fn pax_time(key: &[u8], value: &[u8]) -> std::result::Result<FileTime, String> {
    let text = c_str(value);
    let negative = text.first() == Some(&b'-');
    let body = &text[usize::from(negative)..];
    let (whole, digits) = leading_number(body);
    if digits == 0 {
        return Err(format!(
            "malformed extended header: invalid {}={}",
            shown(key),
            shown(value)
        ));
    }
    let out_of_range = || {
        format!(
            "extended header {}={} is out of range",
            shown(key),
            shown(value)
        )
    };
    let whole = whole.ok_or_else(out_of_range)?;
    let mut secs = match negative {
        false => i64::try_from(whole).map_err(|_| out_of_range())?,
        true => 0i64.checked_sub_unsigned(whole).ok_or_else(out_of_range)?,
    };
    let mut nanos: u32 = 0;
    if body.get(digits) == Some(&b'.') {
        let frac: Vec<u8> = body[digits + 1..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        for i in 0..9 {
            nanos = nanos * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
        }
        if negative {
            // "-1.10000000001" is -2 + 0.89999999...: rounded down.
            if frac.iter().skip(9).any(|&d| d != b'0') {
                nanos += 1;
            }
            if nanos != 0 {
                secs = secs.checked_sub(1).ok_or_else(out_of_range)?;
                nanos = 1_000_000_000 - nanos;
            }
        }
    }
    Ok(FileTime::from_unix_time(secs, nanos))
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
        assert_eq!(
            header_mtime(&header_with_mtime(f)).ok(),
            Some(1_700_000_000)
        );
        // -1 and -2^31 - 1 (1901) in GNU's two's complement form
        assert_eq!(header_mtime(&header_with_mtime([0xff; 12])).ok(), Some(-1));
        let mut f = [0xff; 12];
        f[7..].copy_from_slice(&[0xff, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(
            header_mtime(&header_with_mtime(f)).ok(),
            Some(-(1 << 31) - 1)
        );
        // octal, as before
        let mut h = tar::Header::new_gnu();
        h.set_mtime(12345);
        assert_eq!(header_mtime(&h).ok(), Some(12345));
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
        let t = |v: &[u8]| pax_time(b"mtime", v);
        let at = |s, n| Ok(FileTime::from_unix_time(s, n));
        assert_eq!(t(b"1700000000.123456789"), at(1_700_000_000, 123_456_789));
        assert_eq!(t(b"1700000000.5"), at(1_700_000_000, 500_000_000));
        assert_eq!(t(b"12"), at(12, 0));
        assert_eq!(t(b"12."), at(12, 0));
        assert_eq!(t(b"-1.25"), at(-2, 750_000_000));
        assert_eq!(t(b"-0.5"), at(-1, 500_000_000));
        assert_eq!(t(b"1.1234567891"), at(1, 123_456_789));
        // past the ninth digit, a negative time is rounded down
        assert_eq!(t(b"-1.1234567891"), at(-2, 876_543_210));
        assert_eq!(t(b"-1.1234567890"), at(-2, 876_543_211));
        // whatever follows the number is ignored, as GNU tar does
        assert_eq!(t(b"999xxx9324.432432444444"), at(999, 0));
        assert_eq!(t(b"5.5x"), at(5, 500_000_000));
        assert_eq!(t(b"7\0junk"), at(7, 0));
        for bad in [
            &b"x"[..],
            b".5",
            b"",
            b" 1",
            b"+1",
            b"-",
            b"99999999999999999999",
        ] {
            assert!(t(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            t(b"x").unwrap_err(),
            "malformed extended header: invalid mtime=x"
        );
    }

    #[test]
    fn pax_numbers() {
        let n = |v: &[u8], max| pax_number(b"uid", v, max);
        assert_eq!(n(b"1000", ID_MAX), Ok(1000));
        assert_eq!(n(b"-0", ID_MAX), Ok(0));
        assert_eq!(n(b"4294967295", ID_MAX), Ok(u64::from(u32::MAX)));
        assert_eq!(n(b"12\0x", ID_MAX), Ok(12));
        assert_eq!(n(b"18446744073709551615", u64::MAX), Ok(u64::MAX));
        for bad in [&b""[..], b"x", b"1x", b" 1", b"+1", b"-", b"1.5"] {
            assert!(
                n(bad, ID_MAX).unwrap_err().contains("invalid uid="),
                "{bad:?}"
            );
        }
        for big in [&b"4294967296"[..], b"-1", b"99999999999999999999999"] {
            assert!(
                n(big, ID_MAX).unwrap_err().contains("out of range"),
                "{big:?}"
            );
        }
        assert!(n(b"-0", u64::MAX).is_err());
    }

    #[test]
    fn pax_sparse_records() {
        let decode = |records: &[(&str, &str)]| {
            let (mut info, mut r) = (PaxInfo::default(), PaxRecords::default());
            for (k, v) in records {
                r.decode(&mut info, k.as_bytes(), v.as_bytes())?;
            }
            Ok::<_, String>(info.sparse_map)
        };
        let map_0_1 = [
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.map", "0,5,100,3"),
        ];
        assert_eq!(decode(&map_0_1), Ok(vec![(0, 5), (100, 3)]));
        let map_0_0 = [
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "5"),
            ("GNU.sparse.offset", "100"),
            ("GNU.sparse.numbytes", "3"),
        ];
        assert_eq!(decode(&map_0_0), Ok(vec![(0, 5), (100, 3)]));
        // more chunks than numblocks, or none declared: GNU tar's "excess"
        assert!(decode(&[("GNU.sparse.map", "0,5")])
            .unwrap_err()
            .contains("excess"));
        assert!(decode(&[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,5,9,1")]).is_err());
        for bad in ["0,5,1", "0;5", "", "0,,5", "x"] {
            let records = [("GNU.sparse.numblocks", "9"), ("GNU.sparse.map", bad)];
            assert!(decode(&records).is_err(), "{bad:?}");
        }
    }
}
