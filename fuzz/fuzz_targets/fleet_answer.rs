//! Fuzzes a fleet member's answer to `serf query stretcher-status` (SPEC §13, §17):
//! the answer parser and the row `fleet status` prints for it, read as serf's JSON
//! carries it and as its text output does on a terminal.
//!
//! Input:
//!   byte 0    flags: bit 0  `--checksum` of 40 hex digits, bit 1  of 12 (bit 0 wins),
//!                    bit 2  the answer read through serf's text output
//!   byte 1    the length N of the node name (taken modulo 64)
//!   2..2+N    the node name (lossy UTF-8, as serf's names are strings)
//!   the rest  the answer: the bytes the member's handler wrote
//! Must never panic. The table is the header, at least one row, and the summary
//! `1 answered of 1 alive members: ...`; every row is one line that starts with the
//! node's own name (escaped): an answer can never print a row of another node; no
//! control character but the line ends is left anywhere.
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
    let table = stretcher::fleet::answer_table(&node, answer, checksum, flags & 4 != 0);

    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in {table:?}"
    );
    assert!(table.ends_with('\n'), "{table:?}");
    let lines: Vec<&str> = table.split_terminator('\n').collect();
    assert!(lines.len() >= 3, "{table:?}");
    assert!(lines[0].starts_with("NODE"), "{table:?}");
    let summary = lines[lines.len() - 1];
    assert!(
        summary.starts_with("1 answered of 1 alive members: "),
        "{table:?}"
    );
    let shown = escaped(&node);
    let cell = format!("{shown:<w$}  ", w = shown.chars().count().max(4));
    for row in &lines[1..lines.len() - 1] {
        assert!(
            row.starts_with(&cell),
            "a row of another node: {row:?} in {table:?}"
        );
    }
});
