//! Checksums (SPEC §4, §5): the algorithm is chosen by the hex length of `checksum`;
//! a reader that hashes what passes through it; and `Verified<T>`, a value that can
//! only be made here, after the digest matched.
//!
//! Never trust bytes before `HashingReader::finish` said they match.

use std::io::{self, Read};

use md5::Md5;
use sha1::{Digest, Sha1};
use sha2::{Sha256, Sha512};

use crate::error::{Error, Result};

/// The hash algorithms a `checksum` may name, by its length in hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
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

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

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

    /// Compares a finished hasher with this checksum; the only maker of `Verified`.
    pub fn verify<T>(&self, hasher: Hasher, value: T) -> Result<Verified<T>> {
        let got = hasher.finish_hex();
        if got == self.hex {
            Ok(Verified(value))
        } else {
            Err(Error::ChecksumMismatch {
                expected: self.hex.clone(),
                got,
            })
        }
    }
}

/// A running digest of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
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

/// A reader that hashes every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, hasher: Hasher) -> Self {
        HashingReader {
            inner,
            hasher,
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The reader and the hasher, for `Checksum::verify`.
    pub(crate) fn into_parts(self) -> (R, Hasher) {
        (self.inner, self.hasher)
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

/// A value whose bytes matched the manifest's checksum. Only `Checksum::verify`
/// makes one; nothing turns another value into one.
#[derive(Debug)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub fn get(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
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
        let mut r = HashingReader::new(&b"abc"[..], c.hasher());
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.count(), 3);
        let (_, h) = r.into_parts();
        assert_eq!(*c.verify(h, 7).unwrap().get(), 7);

        let mut r = HashingReader::new(&b"abd"[..], c.hasher());
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (_, h) = r.into_parts();
        let err = c.verify(h, ()).unwrap_err().to_string();
        assert!(
            err.starts_with("checksum mismatch. expected:a9993e36"),
            "{err}"
        );
    }
}
