//! Where a repository lives in an object store: `s3://BUCKET/PREFIX`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use stasis_store::{Error, ErrorKind, Result};

/// A bucket and a key prefix in it (`s3://BUCKET/PREFIX`; the prefix may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// `/`-separated segments, without a leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

fn bad(url: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("bad store URL {url:?}: {why} (expected s3://BUCKET/PREFIX)"),
    )
}

impl FromStr for S3Location {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad(url, "not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules (what Garage and AWS both accept).
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad(
                url,
                "a bucket is 3 to 63 of a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix_ok = prefix.is_empty()
            || prefix.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !prefix_ok {
            return Err(bad(
                url,
                "a prefix is '/'-separated segments of A-Z, a-z, 0-9, '.', '_' and '-'",
            ));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl S3Location {
    /// A client for this bucket, configured from the usual variables: `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP` (and
    /// every other `AWS_*` variable `object_store` knows).
    pub fn client(&self) -> Result<Arc<dyn ObjectStore>> {
        self.client_from(std::env::vars())
    }

    /// A client configured from `vars` (`AWS_*` names and values, as in the
    /// environment) instead of the process's environment.
    pub fn client_from(
        &self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::new();
        for (k, v) in vars {
            let known = k
                .starts_with("AWS_")
                .then(|| k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().ok())
                .flatten();
            if let Some(key) = known {
                builder = builder.with_config(key, v);
            }
        }
        let s3 = builder
            .with_bucket_name(&self.bucket)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot reach {self}: {e} (set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, \
                         AWS_SECRET_ACCESS_KEY and AWS_REGION)"
                    ),
                )
            })?;
        Ok(Arc::new(s3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let l: S3Location = "s3://stasis-test/fleet/one".parse().expect("url");
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("stasis-test", "fleet/one")
        );
        assert_eq!(l.to_string(), "s3://stasis-test/fleet/one");
        let l: S3Location = "s3://bkt".parse().expect("url");
        assert_eq!(l.prefix, "");
        assert_eq!(l.to_string(), "s3://bkt");
        let l: S3Location = "s3://bkt/p/".parse().expect("url");
        assert_eq!(l.prefix, "p");
        for bad in [
            "file:///x",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-bkt",
            "s3://bkt/../x",
            "s3://bkt/a//b",
            "s3://bkt/a b",
        ] {
            let e = bad.parse::<S3Location>().expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
