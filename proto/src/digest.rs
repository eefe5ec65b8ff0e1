//! Validated content digests (`<algorithm>:<lowercase hex>`).

use std::fmt;
use std::str::FromStr;

/// Hash algorithms strata accepts in digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, 64 hex characters.
    Sha256,
    /// SHA-512, 128 hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest and in `blobs/<name>/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of a hash of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` separator.
    #[error("digest has no algorithm separator")]
    MissingSeparator,
    /// The algorithm is not one strata supports.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// The encoded part has the wrong length for its algorithm.
    #[error("digest has {actual} hex characters, {algorithm} needs {expected}")]
    BadLength {
        /// The digest's algorithm.
        algorithm: Algorithm,
        /// Length required by the algorithm.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// The encoded part has a character outside `[0-9a-f]`.
    #[error("digest contains a character outside lowercase hex")]
    BadCharacter,
}

/// A content digest such as `sha256:e3b0...`, valid by construction.
///
/// The hex part is exactly as long as its algorithm requires and is lowercase hex only, so
/// a `Digest` is always safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::MissingSeparator)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::BadLength {
                algorithm,
                expected: algorithm.hex_len(),
                actual: hex.len(),
            });
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadCharacter);
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Builds a digest from raw hash bytes; the length must match the algorithm.
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, DigestError> {
        if bytes.len() * 2 != algorithm.hex_len() {
            return Err(DigestError::BadLength {
                algorithm,
                expected: algorithm.hex_len(),
                actual: bytes.len() * 2,
            });
        }
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            use fmt::Write;
            let _ = write!(hex, "{b:02x}");
        }
        Ok(Digest { algorithm, hex })
    }

    /// The digest's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part, safe as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_valid_digest() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        let long = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(Digest::parse(&long).unwrap().hex().len(), 128);
    }

    #[test]
    fn rejects_hostile_digests() {
        let cases = [
            ("", DigestError::MissingSeparator),
            ("sha256", DigestError::MissingSeparator),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                DigestError::UnsupportedAlgorithm,
            ),
            ("SHA256:00", DigestError::UnsupportedAlgorithm),
            (
                "sha256:../..",
                DigestError::BadLength {
                    algorithm: Algorithm::Sha256,
                    expected: 64,
                    actual: 5,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Digest::parse(input).unwrap_err(), want, "{input:?}");
        }
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert_eq!(
            Digest::parse(&upper).unwrap_err(),
            DigestError::BadCharacter
        );
        let traversal = format!("sha256:../{}", "a".repeat(61));
        assert_eq!(
            Digest::parse(&traversal).unwrap_err(),
            DigestError::BadCharacter
        );
        let nul = format!("sha256:{}\0", "a".repeat(63));
        assert_eq!(Digest::parse(&nul).unwrap_err(), DigestError::BadCharacter);
        let long = format!("sha256:{}", "a".repeat(65));
        assert!(matches!(
            Digest::parse(&long),
            Err(DigestError::BadLength { .. })
        ));
    }

    #[test]
    fn from_bytes_round_trips() {
        let d = Digest::from_bytes(Algorithm::Sha256, &[0xab; 32]).unwrap();
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(Digest::from_bytes(Algorithm::Sha256, &[0; 31]).is_err());
    }
}
