//! `SCHEME://BUCKET/NAME` URLs of object stores (`s3://`, `gs://`, SPEC §8): the one
//! split and the checks both stores share. The name is kept verbatim (nothing is
//! percent-decoded); each store adds its own rules on the name.
//!
//! Never fetches, signs or logs.

/// How one store spells its URLs in messages.
pub(crate) struct Form {
    /// The scheme, matched without regard to case (`s3`, `gs`).
    pub scheme: &'static str,
    /// The message for another scheme (`not an s3:// URL`).
    pub other_scheme: &'static str,
    /// What the store calls the part after the bucket (`object key`).
    pub name: &'static str,
    /// The URL's shape (`s3://bucket/key`).
    pub shape: &'static str,
}

/// Splits `url` into bucket and name: the scheme is `form.scheme`, the bucket is
/// non-empty and made of ASCII letters, digits, `-`, `.` and `_`, the name non-empty.
pub(crate) fn split<'a>(url: &'a str, form: &Form) -> Result<(&'a str, &'a str), String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(form.scheme) => rest,
        _ => return Err(form.other_scheme.into()),
    };
    let missing_name = || format!("no {} (expected {})", form.name, form.shape);
    let (bucket, name) = rest.split_once('/').ok_or_else(missing_name)?;
    if bucket.is_empty() {
        return Err(format!("no bucket name (expected {})", form.shape));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!("invalid bucket name {bucket:?}"));
    }
    if name.is_empty() {
        return Err(missing_name());
    }
    Ok((bucket, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Form = Form {
        scheme: "s3",
        other_scheme: "not an s3:// URL",
        name: "object key",
        shape: "s3://bucket/key",
    };

    #[test]
    fn splits_and_checks() {
        assert_eq!(split("S3://b-1.x_y/a/b c", &FORM), Ok(("b-1.x_y", "a/b c")));
        assert_eq!(split("gs://b/k", &FORM), Err("not an s3:// URL".into()));
        for (url, want) in [
            ("s3://b", "no object key (expected s3://bucket/key)"),
            ("s3://b/", "no object key (expected s3://bucket/key)"),
            ("s3:///k", "no bucket name (expected s3://bucket/key)"),
            ("s3://b!/k", "invalid bucket name \"b!\""),
        ] {
            assert_eq!(split(url, &FORM), Err(want.to_string()), "{url}");
        }
    }
}
