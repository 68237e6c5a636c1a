//! Minisign signatures of manifests (SPEC §15).
//!
//! One job: decide whether the raw bytes of a manifest carry a valid minisign
//! signature (legacy or prehashed) by one of the `--trusted-key`s. The signature
//! lives at `MANIFEST_URL.minisig` and is fetched by the caller through the same
//! path as the manifest; this module only parses keys and signatures and checks
//! them with `minisign-verify` (no Ed25519 of its own).
//!
//! It must never fetch, run anything or log: a refusal is returned as a `Refusal`
//! whose reason the caller turns into the one line the user sees.

use std::fmt;
use std::path::Path;

use base64::Engine;
use minisign_verify::{PublicKey, Signature};

/// A `.minisig` larger than this is not a minisign signature (one is ~300 bytes;
/// the trusted comment is one line).
pub(crate) const MAX_SIGNATURE_BYTES: usize = 64 * 1024;

/// One `--trusted-key`: the key and its minisign key id, as minisign prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// 16 upper-case hex digits (`minisign -G` prints the same).
    pub id: String,
    key: PublicKey,
}

impl TrustedKey {
    /// Reads a `--trusted-key` value: the base64 key line (`RW...`) or the path of a
    /// `.pub` file (its untrusted comment line, then the key line).
    pub fn parse(arg: &str) -> std::result::Result<TrustedKey, String> {
        let text = arg.trim();
        if text.is_empty() {
            return Err("empty; expected a minisign public key (RW...) or a .pub file".into());
        }
        let line = if Path::new(text).is_file() {
            let content =
                std::fs::read_to_string(text).map_err(|e| format!("cannot read {text}: {e}"))?;
            key_line(&content)
                .ok_or_else(|| format!("{text} holds no minisign public key line"))?
                .to_string()
        } else {
            text.to_string()
        };
        let key = PublicKey::from_base64(&line).map_err(|e| {
            if line.ends_with(".pub") || line.starts_with(['/', '.']) {
                format!("no such key file: {text}")
            } else {
                format!("not a minisign public key ({e})")
            }
        })?;
        let id = key_id_of(&line).ok_or_else(|| "not a minisign public key".to_string())?;
        Ok(TrustedKey { id, key })
    }
}

/// The key line of a `.pub` file: the first line that is not an untrusted comment
/// and not blank.
fn key_line(content: &str) -> Option<&str> {
    content
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
}

/// The key id (bytes 2..10 of a decoded key or signature line) the way minisign
/// prints it (`minisign public key 61F28A1FC425206`): a little-endian u64 in upper-case
/// hex, without leading zeros (minisign's `%" PRIX64 "`).
fn key_id_of(b64_line: &str) -> Option<String> {
    let bin = base64::engine::general_purpose::STANDARD
        .decode(b64_line.trim())
        .ok()?;
    let id: [u8; 8] = bin.get(2..10)?.try_into().ok()?;
    Some(format!("{:X}", u64::from_le_bytes(id)))
}

/// A verified signature: which key made it, and its trusted comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub trusted_comment: String,
}

/// Why a manifest is refused (SPEC §15). `Display` is the reason as the user reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The `.minisig` could not be fetched (absent, or the fetch failed).
    NoSignature(String),
    /// The `.minisig` is not a minisign signature.
    Malformed(String),
    /// Signed by a key that is not trusted (the signature's key id).
    UnknownKeyId(String),
    /// Signed by a trusted key, but not over these bytes (or the trusted comment
    /// was altered).
    BadSignature(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSignature(why) => write!(f, "no signature: {why}"),
            Refusal::Malformed(why) => write!(f, "malformed signature: {why}"),
            Refusal::UnknownKeyId(id) => {
                write!(f, "unknown key id {id}: not one of the trusted keys")
            }
            Refusal::BadSignature(id) => write!(
                f,
                "bad signature: key {id} did not sign these bytes (tampered, or a signature of another file)"
            ),
        }
    }
}

/// The URL of the signature of `manifest_url`: the URL with `.minisig` appended to
/// its path (before a `?query` or `#fragment` of an http(s) URL).
pub(crate) fn signature_url(manifest_url: &str) -> String {
    let http = manifest_url.starts_with("http://") || manifest_url.starts_with("https://");
    let cut = if http {
        manifest_url.find(['?', '#']).unwrap_or(manifest_url.len())
    } else {
        manifest_url.len()
    };
    format!("{}.minisig{}", &manifest_url[..cut], &manifest_url[cut..])
}

/// Checks that `signature` (the `.minisig` file's bytes) is a minisign signature of
/// `message` by one of `keys`. Legacy and prehashed signatures are both accepted.
pub fn verify(
    message: &[u8],
    signature: &[u8],
    keys: &[TrustedKey],
) -> std::result::Result<Verified, Refusal> {
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(Refusal::Malformed(format!(
            "{} bytes, more than a signature can be ({MAX_SIGNATURE_BYTES})",
            signature.len()
        )));
    }
    let text =
        std::str::from_utf8(signature).map_err(|_| Refusal::Malformed("not UTF-8 text".into()))?;
    let sig = Signature::decode(text).map_err(|e| Refusal::Malformed(e.to_string()))?;
    // decode() read the second line as 74 bytes of base64: the id is in it.
    let sig_id = text
        .lines()
        .nth(1)
        .and_then(key_id_of)
        .ok_or_else(|| Refusal::Malformed("no signature line".into()))?;
    let Some(key) = keys.iter().find(|k| k.id == sig_id) else {
        return Err(Refusal::UnknownKeyId(sig_id));
    };
    match key.key.verify(message, &sig, true) {
        Ok(()) => Ok(Verified {
            key_id: key.id.clone(),
            trusted_comment: sig.trusted_comment().to_string(),
        }),
        Err(minisign_verify::Error::UnexpectedKeyId) => Err(Refusal::UnknownKeyId(sig_id)),
        Err(_) => Err(Refusal::BadSignature(key.id.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `minisign` 0.11 (`-G -W`, `-S`, `-S -l`) over the bytes b"src: x\n";
    // the integration tests make fresh ones with the CLI.
    const PUB: &str = "RWTKOxCE232ibYYNKLgoV4BFn7DsbRQOS0xOHQ1xToilceH+JfW+u9z6";
    const ID: &str = "6DA27DDB84103BCA";
    const MSG: &[u8] = b"src: x\n";
    const PREHASHED: &str = "untrusted comment: signature from minisign secret key
RUTKOxCE232ibZIGHTIZqZCgGusdrRJo3Bvcr/uJlu+g53xi2X+baE+3kGLjiaRUOBwcApSTWoIP2hWwYmQzklOLr3pQkGkJbQk=
trusted comment: unit test
UyKD2SlURUTKXls1lNxaFzlnDTZoZ2DMLaxwSCJbOLESwLLwoEJjJoDG4Xb460vD9vs++xtfu+06IrJNtaJQDg==
";
    const LEGACY: &str = "untrusted comment: signature from minisign secret key
RWTKOxCE232ibVloiIgVaeYyU2pT8hoyqvnB/LPJqGxDhMtLan5KEH9i7OU8YjRiSYo9kXJ5693qG6sgG0/2+UxwyI6rDSNgBwY=
trusted comment: unit test legacy
FNTuBFpweYFQz0nA0YEHb53er/OI84GUduaG0ZD/F1z2p7+3ppiMjGyyYdZ5xaH9CSdjgj8k3rVhPJRERiLsDw==
";
    /// Another key pair's public key, and its signature of MSG.
    const OTHER_PUB: &str = "RWSjEx7YLJzzt0lkK5ejv9YHzpdUjWtunMfhlxgWI45Y23cIfB/yTR2w";
    const OTHER_SIG: &str = "untrusted comment: signature from minisign secret key
RUSjEx7YLJzzt+oWWD/Q6jP3axO4o0EgMPt8gNX3HpzaDCqwCCOZFDieUcGIgykiLyATVENuVvLM8e/BUmJxFs7+DlICXV19IwA=
trusted comment: other
Ektp7TtotGnTE7ChxpC5vhJLb4XuyMIu4H3cZHzpLNYdCS7qDtmmDKC9JVs/sfPQY5Vk1z9m1Qofyw9EMMhmDQ==
";

    fn key() -> TrustedKey {
        TrustedKey::parse(PUB).unwrap()
    }

    #[test]
    fn signature_url_appends_to_the_path() {
        assert_eq!(signature_url("s3://b/m.yml"), "s3://b/m.yml.minisig");
        assert_eq!(signature_url("file:///m.yml"), "file:///m.yml.minisig");
        assert_eq!(
            signature_url("https://h/m.yml?v=1#x"),
            "https://h/m.yml.minisig?v=1#x"
        );
    }

    #[test]
    fn key_lines_and_files_are_read() {
        let k = key();
        assert_eq!(k.id.len(), 16);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        std::fs::write(
            &path,
            format!("untrusted comment: minisign public key {}\n{PUB}\n", k.id),
        )
        .unwrap();
        assert_eq!(TrustedKey::parse(path.to_str().unwrap()).unwrap(), k);
        let e = TrustedKey::parse("/no/such/key.pub").unwrap_err();
        assert!(e.contains("no such key file"), "{e}");
        let e = TrustedKey::parse("RWnotakey").unwrap_err();
        assert!(e.contains("not a minisign public key"), "{e}");
        assert!(TrustedKey::parse("  ").is_err());
    }

    #[test]
    fn garbage_is_malformed_never_accepted() {
        let keys = [key()];
        for sig in [
            &b""[..],
            b"\xff\xfe",
            b"untrusted comment: x\n",
            b"untrusted comment: x\nRUQ=\ntrusted comment: t\nAA==\n",
            &PREHASHED.as_bytes()[..PREHASHED.len() / 2],
        ] {
            match verify(MSG, sig, &keys) {
                Err(Refusal::Malformed(_)) => {}
                other => panic!("{sig:?}: {other:?}"),
            }
        }
        let big = vec![b'a'; MAX_SIGNATURE_BYTES + 1];
        assert!(matches!(
            verify(b"", &big, &keys),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn prehashed_and_legacy_signatures_verify() {
        let keys = [key()];
        assert_eq!(key().id, ID);
        let v = verify(MSG, PREHASHED.as_bytes(), &keys).unwrap();
        assert_eq!(v.key_id, ID);
        assert_eq!(v.trusted_comment, "unit test");
        let v = verify(MSG, LEGACY.as_bytes(), &keys).unwrap();
        assert_eq!(v.trusted_comment, "unit test legacy");
    }

    #[test]
    fn either_of_two_keys_may_sign() {
        let other = TrustedKey::parse(OTHER_PUB).unwrap();
        let keys = [other.clone(), key()];
        assert_eq!(verify(MSG, PREHASHED.as_bytes(), &keys).unwrap().key_id, ID);
        assert_eq!(
            verify(MSG, OTHER_SIG.as_bytes(), &keys).unwrap().key_id,
            other.id
        );
    }

    #[test]
    fn another_key_is_an_unknown_key_id() {
        match verify(MSG, OTHER_SIG.as_bytes(), &[key()]) {
            Err(Refusal::UnknownKeyId(id)) => assert_eq!(id, "B7F39C2CD81E13A3"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verify(MSG, PREHASHED.as_bytes(), &[]),
            Err(Refusal::UnknownKeyId(_))
        ));
    }

    #[test]
    fn changed_bytes_or_comment_are_a_bad_signature() {
        let keys = [key()];
        for sig in [PREHASHED, LEGACY] {
            match verify(b"src: y\n", sig.as_bytes(), &keys) {
                Err(Refusal::BadSignature(id)) => assert_eq!(id, ID),
                other => panic!("{other:?}"),
            }
            let forged = sig.replace("trusted comment: unit test", "trusted comment: evil");
            assert!(matches!(
                verify(MSG, forged.as_bytes(), &keys),
                Err(Refusal::BadSignature(_))
            ));
        }
    }

    #[test]
    fn reasons_read_as_one_line() {
        for r in [
            Refusal::NoSignature("HTTP 404".into()),
            Refusal::Malformed("x".into()),
            Refusal::UnknownKeyId("0123456789ABCDEF".into()),
            Refusal::BadSignature("0123456789ABCDEF".into()),
        ] {
            let s = r.to_string();
            assert!(!s.contains('\n'), "{s}");
        }
        assert!(Refusal::UnknownKeyId("AB".into())
            .to_string()
            .starts_with("unknown key id AB"));
    }

    #[test]
    fn key_ids_print_without_leading_zeros_as_minisign_does() {
        use base64::Engine;
        let mut bin = b"Ed".to_vec();
        bin.extend_from_slice(&0x061F_28A1_FC42_5206u64.to_le_bytes());
        bin.extend_from_slice(&[0; 32]);
        let line = base64::engine::general_purpose::STANDARD.encode(&bin);
        assert_eq!(key_id_of(&line).as_deref(), Some("61F28A1FC425206"));
    }
}
