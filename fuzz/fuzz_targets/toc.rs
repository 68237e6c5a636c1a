//! Fuzzes the packed archive's table of contents reader (SPEC §18,
//! docs/packed-archive.md): the footer parser, the member decompression with its limit,
//! the decoder, and the validation.
//!
//! Input: the first byte picks the path, the rest is the data:
//!   0       raw table bytes: `Table::decode`, then `validate` against a bound taken
//!           from the data's length
//!   1, 2    a gzip / zstd table member: `Table::from_member` under a footer that
//!           places it right after that many members' bytes
//!   else    an archive's tail: `Footer::parse` with the data's length as the archive's
//! Must never panic; a table that decodes encodes back to a table that decodes equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stretcher::toc::{Codec, Footer, Table};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick {
        0 => {
            if let Ok(table) = Table::decode(rest) {
                let again = Table::decode(&table.encode()).expect("a decoded table re-encodes");
                assert_eq!(again, table);
                let _ = table.validate(rest.len() as u64 * 1000);
            }
        }
        1 | 2 => {
            let codec = if pick == 1 { Codec::Gzip } else { Codec::Zstd };
            let footer = Footer {
                codec,
                table_offset: 1 << 20,
                table_len: rest.len() as u64,
            };
            match Table::from_member(rest, &footer) {
                Ok(t) => t.validate(footer.table_offset).expect("from_member validated it"),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        _ => {
            if let Ok(f) = Footer::parse(rest, rest.len() as u64) {
                assert_eq!(
                    f.table_offset + f.table_len + f.codec.footer_len() as u64,
                    rest.len() as u64
                );
            }
        }
    }
});
