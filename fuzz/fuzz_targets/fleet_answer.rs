//! Fuzzes a fleet member's answer to `serf query stretcher-status` (SPEC §13, §17):
//! the answer parser and the rows `fleet status` prints for it, the payload read
//! from Serf's RPC as UTF-8 with invalid bytes replaced.
//!
//! Input:
//!   byte 0    flags: bit 0  `--checksum` of 40 hex digits, bit 1  of 12 (bit 0 wins)
//!   byte 1    the length N of the node name (taken modulo 64)
//!   2..2+N    the node name (lossy UTF-8, as serf's names are strings)
//!   the rest  the answer: the bytes the member's handler wrote
//! Must never panic. The table is the header, at least one row, the summary
//! `1 answered of 1 alive members: ...` and then only lines `checksums of ...
//! differ` (an answer naming one dest twice with two checksums); every row is one
//! line that starts with the node's own name (escaped): an answer can never print
//! a row of another node; no control character but the line ends is left anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The node name as the table must show it: every control character as `\xNN` of
/// its UTF-8 bytes (written here again, apart from the library's, as the oracle).
fn escaped(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_control() {
            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [flags, len, rest @ ..] = data else {
        return;
    };
    let n = (*len as usize % 64).min(rest.len());
    let (name, answer) = rest.split_at(n);
    let node = String::from_utf8_lossy(name).into_owned();
    let checksum = if flags & 1 != 0 {
        Some("0123456789abcdef0123456789abcdef01234567")
    } else if flags & 2 != 0 {
        Some("0123456789ab")
    } else {
        None
    };
    let table = stretcher::fleet::answer_table(&node, answer, checksum);

    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in {table:?}"
    );
    assert!(table.ends_with('\n'), "{table:?}");
    let lines: Vec<&str> = table.split_terminator('\n').collect();
    assert!(lines.len() >= 3, "{table:?}");
    assert!(lines[0].starts_with("NODE"), "{table:?}");
    let shown = escaped(&node);
    let cell = format!("{shown:<w$}  ", w = shown.chars().count().max(4));
    // the summary: the first line after the rows that is not a row
    let end = lines
        .iter()
        .skip(1)
        .position(|l| !l.starts_with(&cell))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no summary in {table:?}"));
    assert!(end >= 2, "no row in {table:?}");
    assert!(
        lines[end].starts_with("1 answered of 1 alive members: "),
        "a row of another node, or no summary: {:?} in {table:?}",
        lines[end]
    );
    for line in &lines[end + 1..] {
        assert!(line.starts_with("checksums of "), "{line:?} in {table:?}");
        assert!(line.contains(" differ "), "{line:?} in {table:?}");
    }
});
