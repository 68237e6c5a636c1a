#![allow(dead_code)]
use std::io;
use std::io::Write;

use std::str;

use crate::other;

// Keywords for PAX extended header records.
pub const PAX_NONE: &str = ""; // Indicates that no PAX key is suitable
pub const PAX_PATH: &str = "path";
pub const PAX_LINKPATH: &str = "linkpath";
pub const PAX_SIZE: &str = "size";
pub const PAX_UID: &str = "uid";
pub const PAX_GID: &str = "gid";
pub const PAX_UNAME: &str = "uname";
pub const PAX_GNAME: &str = "gname";
pub const PAX_MTIME: &str = "mtime";
pub const PAX_ATIME: &str = "atime";
pub const PAX_CTIME: &str = "ctime"; // Removed from later revision of PAX spec, but was valid
pub const PAX_CHARSET: &str = "charset"; // Currently unused
pub const PAX_COMMENT: &str = "comment"; // Currently unused

pub const PAX_SCHILYXATTR: &str = "SCHILY.xattr.";

// Keywords for GNU sparse files in a PAX extended header.
pub const PAX_GNUSPARSE: &str = "GNU.sparse.";
pub const PAX_GNUSPARSENUMBLOCKS: &str = "GNU.sparse.numblocks";
pub const PAX_GNUSPARSEOFFSET: &str = "GNU.sparse.offset";
pub const PAX_GNUSPARSENUMBYTES: &str = "GNU.sparse.numbytes";
pub const PAX_GNUSPARSEMAP: &str = "GNU.sparse.map";
pub const PAX_GNUSPARSENAME: &str = "GNU.sparse.name";
pub const PAX_GNUSPARSEMAJOR: &str = "GNU.sparse.major";
pub const PAX_GNUSPARSEMINOR: &str = "GNU.sparse.minor";
pub const PAX_GNUSPARSESIZE: &str = "GNU.sparse.size";
pub const PAX_GNUSPARSEREALSIZE: &str = "GNU.sparse.realsize";

/// An iterator over the pax extensions in an archive entry.
///
/// This iterator yields structures which can themselves be parsed into
/// key/value pairs.
///
/// PATCH(pax-length): records are cut by their decimal length prefix, as POSIX
/// defines them, so a value may hold any byte, newlines included (binary xattrs such
/// as `security.ima`, comments, paths). PATCH(pax-record): each record is read as GNU
/// tar 1.34's `decode_record` reads it: blanks and tabs before the length and after
/// it, a NUL where a length should start ends the list silently (padding), and a
/// malformed record is an error worded as GNU tar words it (it ends the iteration;
/// GNU tar applies the records before it and exits with status 2).
pub struct PaxExtensions<'entry> {
    data: &'entry [u8],
}

impl<'entry> PaxExtensions<'entry> {
    /// Create new pax extensions iterator from the given entry data.
    pub fn new(a: &'entry [u8]) -> Self {
        PaxExtensions { data: a }
    }
}

/// A key/value pair corresponding to a pax extension.
pub struct PaxExtension<'entry> {
    key: &'entry [u8],
    value: &'entry [u8],
}

// PATCH(last-wins): a key given twice in one pax header: the last record wins.
pub fn pax_extensions_value(a: &[u8], key: &str) -> Option<u64> {
    let mut found = None;
    for extension in PaxExtensions::new(a) {
        let current_extension = match extension {
            Ok(ext) => ext,
            Err(_) => return found,
        };
        if current_extension.key() != Ok(key) {
            continue;
        }

        let value = match current_extension.value() {
            Ok(value) => value,
            Err(_) => {
                found = None;
                continue;
            }
        };
        found = value.parse::<u64>().ok();
    }
    found
}

impl<'entry> Iterator for PaxExtensions<'entry> {
    type Item = io::Result<PaxExtension<'entry>>;

    fn next(&mut self) -> Option<io::Result<PaxExtension<'entry>>> {
        match decode_record(self.data) {
            Ok(None) => {
                self.data = &[];
                None
            }
            Ok(Some((len, key, value))) => {
                self.data = &self.data[len..];
                Some(Ok(PaxExtension { key, value }))
            }
            Err(msg) => {
                self.data = &[];
                Some(Err(other(msg)))
            }
        }
    }
}

/// PATCH(pax-record): the first record of `data` as GNU tar's `decode_record` reads
/// it: `Ok(None)` at the end of the list (nothing left, or a NUL where the length
/// starts), else its length, key and value, or GNU tar's words for what is wrong.
/// (GNU tar sees the data as a C string: a NUL past its end stops every scan.)
fn decode_record(data: &[u8]) -> Result<Option<(usize, &[u8], &[u8])>, &'static str> {
    let at = |i: usize| data.get(i).copied().unwrap_or(0);
    let is_blank = |b: u8| b == b' ' || b == b'\t';
    let mut p = 0;
    while is_blank(at(p)) {
        p += 1;
    }
    if !at(p).is_ascii_digit() {
        return match at(p) {
            0 => Ok(None),
            _ => Err("malformed extended header: missing length"),
        };
    }
    let mut len: usize = 0;
    while at(p).is_ascii_digit() {
        len = len
            .checked_mul(10)
            .and_then(|l| l.checked_add(usize::from(at(p) - b'0')))
            .ok_or("extended header length is out of allowed range")?;
        p += 1;
    }
    if len > data.len() {
        return Err("extended header length is out of range");
    }
    let len_end = p;
    while is_blank(at(p)) {
        p += 1;
    }
    if p == len_end {
        return Err("malformed extended header: missing blank after length");
    }
    let key_start = p;
    while at(p) != 0 && at(p) != b'=' {
        p += 1;
    }
    if at(p) != b'=' || p >= len {
        return Err("malformed extended header: missing equal sign");
    }
    if data[len - 1] != b'\n' {
        return Err("malformed extended header: missing newline");
    }
    Ok(Some((len, &data[key_start..p], &data[p + 1..len - 1])))
}

impl<'entry> PaxExtension<'entry> {
    /// Returns the key for this key/value pair parsed as a string.
    ///
    /// May fail if the key isn't actually utf-8.
    pub fn key(&self) -> Result<&'entry str, str::Utf8Error> {
        str::from_utf8(self.key)
    }

    /// Returns the underlying raw bytes for the key of this key/value pair.
    pub fn key_bytes(&self) -> &'entry [u8] {
        self.key
    }

    /// Returns the value for this key/value pair parsed as a string.
    ///
    /// May fail if the value isn't actually utf-8.
    pub fn value(&self) -> Result<&'entry str, str::Utf8Error> {
        str::from_utf8(self.value)
    }

    /// Returns the underlying raw bytes for this value of this key/value pair.
    pub fn value_bytes(&self) -> &'entry [u8] {
        self.value
    }
}

/// Extension trait for `Builder` to append PAX extended headers.
impl<T: Write> crate::Builder<T> {
    /// Append PAX extended headers to the archive.
    ///
    /// Takes in an iterator over the list of headers to add to convert it into a header set formatted.
    ///
    /// Returns io::Error if an error occurs, else it returns ()
    pub fn append_pax_extensions<'key, 'value>(
        &mut self,
        headers: impl IntoIterator<Item = (&'key str, &'value [u8])>,
    ) -> Result<(), io::Error> {
        // Store the headers formatted before write
        let mut data: Vec<u8> = Vec::new();

        // For each key in headers, convert into a sized space and add it to data.
        // This will then be written in the file
        for (key, value) in headers {
            let mut len_len = 1;
            let mut max_len = 10;
            let rest_len = 3 + key.len() + value.len();
            while rest_len + len_len >= max_len {
                len_len += 1;
                max_len *= 10;
            }
            let len = rest_len + len_len;
            write!(&mut data, "{} {}=", len, key)?;
            data.extend_from_slice(value);
            data.push(b'\n');
        }

        // Ignore the header append if it's empty.
        if data.is_empty() {
            return Ok(());
        }

        // Create a header of type XHeader, set the size to the length of the
        // data, set the entry type to XHeader, and set the checksum
        // then append the header and the data to the archive.
        let mut header = crate::Header::new_ustar();
        let data_as_bytes: &[u8] = &data;
        header.set_size(data_as_bytes.len() as u64);
        header.set_entry_type(crate::EntryType::XHeader);
        header.set_cksum();
        self.append(&header, data_as_bytes)
    }
}
