//! Platforms (`os/arch[/variant]`), normalised and matched the way containerd does
//! (`containerd/platforms`): `aarch64` is `arm64`, `arm64/v8` is `arm64`, `armhf` is
//! `arm/v7`, and a platform also accepts the older ones it can run, best first.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An image platform as it appears in an index entry or an image config.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system: `linux`.
    #[serde(default)]
    pub os: String,
    /// CPU architecture: `amd64`, `arm64`.
    #[serde(default)]
    pub architecture: String,
    /// CPU variant: `v7` (empty when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
}

impl Platform {
    /// A platform from its parts, normalised.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.to_owned(),
            os_version: String::new(),
        }
        .normalized()
    }

    /// The platform of this host: `linux/<arch>`.
    pub fn host() -> Platform {
        let arch = std::env::consts::ARCH;
        let os = std::env::consts::OS;
        Platform::new(os, arch, "")
    }

    /// Parses `os[/arch[/variant]]` or a bare architecture (`arm64`, meaning linux).
    pub fn parse(s: &str) -> Result<Platform> {
        let bad = || Error::invalid(format!("invalid platform {s:?}: want os/arch[/variant]"));
        if s.is_empty()
            || s.len() > 64
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
        {
            return Err(bad());
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts
            .iter()
            .any(|p| !p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()))
        {
            return Err(bad());
        }
        let host = Platform::host();
        let known_os = |p: &str| {
            matches!(
                p.to_ascii_lowercase().as_str(),
                "linux"
                    | "windows"
                    | "darwin"
                    | "macos"
                    | "freebsd"
                    | "netbsd"
                    | "openbsd"
                    | "solaris"
                    | "illumos"
                    | "aix"
                    | "android"
                    | "ios"
                    | "plan9"
                    | "wasip1"
                    | "js"
            )
        };
        let p = match parts.as_slice() {
            [one] if known_os(one) => Platform::new(one, &host.architecture, &host.variant),
            [arch] => Platform::new("linux", arch, ""),
            [os, arch] => Platform::new(os, arch, ""),
            [os, arch, variant] => Platform::new(os, arch, variant),
            _ => return Err(bad()),
        };
        Ok(p)
    }

    /// containerd's normalisation of os, architecture and variant.
    pub fn normalized(&self) -> Platform {
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.to_ascii_lowercase();
        let (arch, variant) = match arch.as_str() {
            "i386" => ("386".to_owned(), String::new()),
            "x86_64" | "x86-64" | "amd64" => (
                "amd64".to_owned(),
                if variant == "v1" {
                    String::new()
                } else {
                    variant
                },
            ),
            "aarch64" | "arm64" => (
                "arm64".to_owned(),
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    _ => variant,
                },
            ),
            "armhf" => ("arm".to_owned(), "v7".to_owned()),
            "armel" => ("arm".to_owned(), "v6".to_owned()),
            "arm" => (
                "arm".to_owned(),
                match variant.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                },
            ),
            _ => (arch, variant),
        };
        Platform {
            os,
            architecture: arch,
            variant,
            os_version: self.os_version.clone(),
        }
    }

    /// The platforms an image of which can run here, best first (containerd's
    /// `platforms.Only`): the platform itself, then older variants of the same family.
    pub fn compatible(&self) -> Vec<Platform> {
        let p = self.normalized();
        let mut v = vec![p.clone()];
        let arm32_down = |from: u32, v: &mut Vec<Platform>| {
            for n in (5..=from).rev() {
                v.push(Platform::new(&p.os, "arm", &format!("v{n}")));
            }
        };
        match p.architecture.as_str() {
            "amd64" => {
                let level = p
                    .variant
                    .strip_prefix('v')
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(1);
                for n in (1..level).rev() {
                    let var = if n == 1 {
                        String::new()
                    } else {
                        format!("v{n}")
                    };
                    v.push(Platform::new(&p.os, "amd64", &var));
                }
                v.push(Platform::new(&p.os, "386", ""));
            }
            "arm64" => arm32_down(8, &mut v),
            "arm" => {
                if let Some(n) = p
                    .variant
                    .strip_prefix('v')
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    arm32_down(n.saturating_sub(1), &mut v);
                }
            }
            _ => {}
        }
        v.dedup();
        v
    }

    /// Whether `other` (e.g. an index entry's platform) is exactly this platform after
    /// normalisation.
    pub fn matches(&self, other: &Platform) -> bool {
        let (a, b) = (self.normalized(), other.normalized());
        a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalise() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/aarch64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            Platform::parse("linux/armhf").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
        assert_eq!(
            Platform::parse("Linux/AMD64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux").unwrap().architecture,
            Platform::host().architecture
        );
        for bad in [
            "",
            "/",
            "linux/",
            "a/b/c/d",
            "linux/amd64 ",
            "linux/../x",
            &"x".repeat(65),
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Platform::host().os == "linux" || cfg!(not(target_os = "linux")));
    }

    #[test]
    fn compatibility_order() {
        let names = |p: &str| -> Vec<String> {
            Platform::parse(p)
                .unwrap()
                .compatible()
                .iter()
                .map(|p| p.to_string())
                .collect()
        };
        assert_eq!(names("linux/amd64"), ["linux/amd64", "linux/386"]);
        assert_eq!(
            names("linux/amd64/v3"),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            names("linux/arm/v7"),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(
            names("linux/arm64"),
            [
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        let want = Platform::parse("linux/arm64").unwrap();
        let entry = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: "v8".into(),
            os_version: String::new(),
        };
        assert!(want.matches(&entry));
    }
}
