//! One raw DEFLATE stream inflated whole, in one call, by libdeflate
//! (`libdeflate-sys`): a packed archive's gzip member, whose lengths it states, is
//! held whole and decompressed into memory at once, about 1.4 × zlib-rs's speed on the
//! benchmark's members. The module is the unpack's only `unsafe`: each call into the C
//! library with the bounds of the Rust slices it is given.

use std::io;
use std::ptr::NonNull;

use libdeflate_sys::{
    libdeflate_alloc_decompressor, libdeflate_crc32, libdeflate_decompressor,
    libdeflate_deflate_decompress_ex, libdeflate_free_decompressor,
    libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE, libdeflate_result_LIBDEFLATE_SUCCESS,
};

/// Why a stream did not inflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Not valid DEFLATE data (or cut short).
    Corrupt,
    /// It makes more bytes than the room given.
    TooLong,
    /// Its final block ends before the input does.
    EndsEarly,
}

/// A libdeflate decompressor (its tables, about 32 KiB), reused call after call.
pub(super) struct Inflate {
    d: NonNull<libdeflate_decompressor>,
}

// SAFETY: the decompressor is plain memory, owned by this value alone and used by one
// call at a time (`&mut self`); it may move to another thread.
unsafe impl Send for Inflate {}

impl Inflate {
    pub(super) fn new() -> io::Result<Inflate> {
        // SAFETY: no arguments; a null pointer (out of memory) is refused below.
        let d = unsafe { libdeflate_alloc_decompressor() };
        NonNull::new(d)
            .map(|d| Inflate { d })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }

    /// Inflates `input`, exactly one whole DEFLATE stream, appending what it makes to
    /// `out`, in `out`'s spare capacity and at most `room` bytes of it: the number of
    /// bytes appended.
    pub(super) fn whole(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
    ) -> Result<usize, Failure> {
        let spare = out.spare_capacity_mut();
        let room = room.min(spare.len());
        let (mut read, mut written) = (0usize, 0usize);
        // SAFETY: `input` is read within its length; libdeflate writes only within the
        // `room` bytes of `spare` (out's allocated, unused capacity) and says how many
        // it wrote; both counts are out-parameters on this stack.
        let result = unsafe {
            libdeflate_deflate_decompress_ex(
                self.d.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                spare.as_mut_ptr().cast(),
                room,
                &mut read,
                &mut written,
            )
        };
        #[allow(non_upper_case_globals)]
        match result {
            libdeflate_result_LIBDEFLATE_SUCCESS => {}
            libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE => return Err(Failure::TooLong),
            _ => return Err(Failure::Corrupt),
        }
        if written > room {
            // Never: libdeflate writes within the room it is given.
            return Err(Failure::TooLong);
        }
        // SAFETY: libdeflate initialized the first `written` bytes of the spare
        // capacity, `written` ≤ `room` ≤ the spare capacity.
        unsafe { out.set_len(out.len() + written) };
        if read != input.len() {
            return Err(Failure::EndsEarly);
        }
        Ok(written)
    }
}

impl Drop for Inflate {
    fn drop(&mut self) {
        // SAFETY: allocated by `libdeflate_alloc_decompressor`, freed once, here.
        unsafe { libdeflate_free_decompressor(self.d.as_ptr()) }
    }
}

/// The CRC-32 (gzip's) of `bytes`, going on from `crc` (0 to start).
pub(super) fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    // SAFETY: libdeflate reads `bytes` within its length.
    unsafe { libdeflate_crc32(crc, bytes.as_ptr().cast(), bytes.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_stream_inflates_whole_and_is_checked_at_both_ends() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        let stream = deflate(&data);
        let mut inf = Inflate::new().unwrap();
        // appended after what the buffer holds
        let mut out = Vec::with_capacity(data.len() + 3);
        out.extend_from_slice(b"abc");
        assert_eq!(inf.whole(&stream, &mut out, data.len()), Ok(data.len()));
        assert_eq!(&out[..3], b"abc");
        assert_eq!(&out[3..], &data[..]);
        assert_eq!(crc32(0, &data), flate2::Crc::new().tap(&data));
        // one byte of room too few
        let mut out = Vec::with_capacity(data.len());
        assert_eq!(
            inf.whole(&stream, &mut out, data.len() - 1),
            Err(Failure::TooLong)
        );
        // the room is also bounded by the capacity
        let mut out = Vec::with_capacity(10);
        assert_eq!(
            inf.whole(&stream, &mut out, usize::MAX),
            Err(Failure::TooLong)
        );
        // bytes after the final block
        let mut longer = stream.clone();
        longer.extend_from_slice(b"\0\0");
        let mut out = Vec::with_capacity(data.len());
        assert_eq!(
            inf.whole(&longer, &mut out, data.len()),
            Err(Failure::EndsEarly)
        );
        // cut short, or damaged
        let mut out = Vec::with_capacity(data.len());
        assert_eq!(
            inf.whole(&stream[..stream.len() / 2], &mut out, data.len()),
            Err(Failure::Corrupt)
        );
        let mut bad = stream.clone();
        bad[0] = 0xff;
        let mut out = Vec::with_capacity(data.len());
        assert_eq!(inf.whole(&bad, &mut out, data.len()), Err(Failure::Corrupt));
        // the decompressor is reused after failures
        let mut out = Vec::with_capacity(data.len());
        assert_eq!(inf.whole(&stream, &mut out, data.len()), Ok(data.len()));
        assert_eq!(out, data);
        // empty data
        let empty = deflate(b"");
        let mut out = Vec::new();
        assert_eq!(inf.whole(&empty, &mut out, 0), Ok(0));
    }

    trait Tap {
        fn tap(self, data: &[u8]) -> u32;
    }
    impl Tap for flate2::Crc {
        fn tap(mut self, data: &[u8]) -> u32 {
            self.update(data);
            self.sum()
        }
    }
}
