//! Checksums (SPEC §4, §5): the algorithm is chosen by the hex length of `checksum`;
//! a reader that hashes what passes through it; and `Verified<T>`, a value that can
//! only be made here, after the digest matched.
//!
//! The only way to a `Verified` is a [`HashingReader`] made for a [`Checksum`]: the
//! bytes read through it are hashed, [`HashingReader::finish`] seals their digest
//! ([`Hashed`], which nothing else makes), and [`Hashed::verify`] pairs a value with
//! it only when the digest is the checksum's. A digest computed elsewhere ([`Hasher`])
//! can never become one. Never trust bytes before that.

use std::io::{self, Read};

use md5::Md5;
use sha1::{Digest, Sha1};
use sha2::{Sha256, Sha512};

use crate::error::{Error, Result};

/// The hash algorithms a `checksum` may name, by its length in hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (32 hex digits).
    Md5,
    /// SHA-1 (40 hex digits).
    Sha1,
    /// SHA-256 (64 hex digits).
    Sha256,
    /// SHA-512 (128 hex digits).
    Sha512,
}

/// An expected digest, lower-case hex, with its algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: Algorithm,
    hex: String,
}

impl Checksum {
    /// Parses a checksum: 32, 40, 64 or 128 hex digits (md5, sha1, sha256, sha512).
    pub fn parse(text: &str) -> std::result::Result<Checksum, String> {
        let hex = text.trim().to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("checksum {text:?} is not hexadecimal"));
        }
        let algorithm = match hex.len() {
            32 => Algorithm::Md5,
            40 => Algorithm::Sha1,
            64 => Algorithm::Sha256,
            128 => Algorithm::Sha512,
            n => {
                return Err(format!(
                    "checksum {text:?} has {n} hex digits; expected 32 (md5), 40 (sha1), 64 (sha256) or 128 (sha512)"
                ))
            }
        };
        Ok(Checksum { algorithm, hex })
    }

    /// The algorithm, by the checksum's length.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The expected digest, lower-case hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A fresh hasher for this checksum's algorithm.
    pub fn hasher(&self) -> Hasher {
        match self.algorithm {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

/// A running digest of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    /// An MD5 digest in progress.
    Md5(Md5),
    /// A SHA-1 digest in progress.
    Sha1(Sha1),
    /// A SHA-256 digest in progress.
    Sha256(Sha256),
    /// A SHA-512 digest in progress.
    Sha512(Box<Sha512>),
}

impl Hasher {
    /// Feeds `data` to the digest.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest in lower-case hex.
    pub fn finish_hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// A reader that hashes every byte read through it, for one expected checksum.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    expected: Checksum,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Hashes what is read from `inner` with `expected`'s algorithm.
    pub fn new(inner: R, expected: &Checksum) -> Self {
        HashingReader {
            inner,
            hasher: expected.hasher(),
            expected: expected.clone(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read, sealed with the checksum it must match.
    pub fn finish(self) -> Hashed {
        Hashed {
            got: self.hasher.finish_hex(),
            expected: self.expected,
        }
    }
}

/// The digest of the bytes one [`HashingReader`] read, and the checksum they must
/// match. Only `HashingReader::finish` makes one.
#[derive(Debug)]
pub struct Hashed {
    got: String,
    expected: Checksum,
}

impl Hashed {
    /// Whether the bytes matched the checksum (the value is made `Verified` later,
    /// by [`Hashed::verify`], once what rests on those bytes is done).
    pub fn matches(&self) -> bool {
        self.got == self.expected.hex
    }

    /// `value` as `Verified` when the bytes matched the checksum; the only maker of
    /// `Verified`. Else the mismatch, with both digests.
    pub fn verify<T>(self, value: T) -> Result<Verified<T>> {
        if self.got == self.expected.hex {
            Ok(Verified(value))
        } else {
            Err(Error::ChecksumMismatch {
                expected: self.expected.hex,
                got: self.got,
            })
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A value whose bytes matched the manifest's checksum. Only [`Hashed::verify`]
/// makes one; nothing turns another value into one.
#[derive(Debug)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The verified value, borrowed.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// The verified value, taken out.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// A part of the verified value (which `part` names) taken out, as verified as the
    /// whole, its default left in its place.
    pub fn take<U: Default>(&mut self, part: impl FnOnce(&mut T) -> &mut U) -> Verified<U> {
        Verified(std::mem::take(part(&mut self.0)))
    }
}

impl<A, B> Verified<(A, B)> {
    /// Splits a verified pair: the first part handed out, the second still verified
    /// (e.g. the staging workspace, and the staged tree the sync takes).
    pub fn split(self) -> (A, Verified<B>) {
        let (a, b) = self.0;
        (a, Verified(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: &Checksum, data: &[u8]) -> String {
        let mut h = c.hasher();
        h.update(data);
        h.finish_hex()
    }

    #[test]
    fn algorithm_by_length() {
        let md5 = Checksum::parse("900150983cd24fb0d6963f7d28e17f72").unwrap();
        assert_eq!(md5.algorithm(), Algorithm::Md5);
        assert_eq!(digest(&md5, b"abc"), md5.hex());
        let sha1 = Checksum::parse("A9993E364706816ABA3E25717850C26C9CD0D89D").unwrap();
        assert_eq!(sha1.algorithm(), Algorithm::Sha1);
        assert_eq!(digest(&sha1, b"abc"), sha1.hex());
        let sha256 =
            Checksum::parse("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .unwrap();
        assert_eq!(digest(&sha256, b"abc"), sha256.hex());
        let sha512 = Checksum::parse(
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        )
        .unwrap();
        assert_eq!(sha512.algorithm(), Algorithm::Sha512);
        assert_eq!(digest(&sha512, b"abc"), sha512.hex());
    }

    #[test]
    fn bad_checksums_are_refused() {
        assert!(Checksum::parse("abc").unwrap_err().contains("3 hex digits"));
        assert!(Checksum::parse(&"z".repeat(40))
            .unwrap_err()
            .contains("not hexadecimal"));
    }

    #[test]
    fn hashing_reader_verifies() {
        let c = Checksum::parse("a9993e364706816aba3e25717850c26c9cd0d89d").unwrap();
        let mut r = HashingReader::new(&b"abc"[..], &c);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.count(), 3);
        assert_eq!(*r.finish().verify(7).unwrap().get(), 7);

        let mut r = HashingReader::new(&b"abd"[..], &c);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let err = r.finish().verify(()).unwrap_err().to_string();
        assert!(
            err.starts_with("checksum mismatch. expected:a9993e36"),
            "{err}"
        );
    }
}
