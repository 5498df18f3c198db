//! OneAgent versions: `major.minor.revision.YYYYMMDD-HHMMSS`, for example `1.277.0.20230914-094321`.

use std::cmp::Ordering;
use std::fmt;

use crate::DesiredError;

/// A parsed OneAgent version. Ordered by the numeric parts compared as numbers, then by the build
/// timestamp compared as a string (a version without a timestamp sorts before the same version with one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Revision.
    pub revision: u64,
    /// Build timestamp `YYYYMMDD-HHMMSS`; absent in a three-part version such as an image tag.
    pub timestamp: Option<String>,
}

impl Ord for AgentVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.revision)
            .cmp(&(other.major, other.minor, other.revision))
            .then_with(|| self.timestamp.cmp(&other.timestamp))
    }
}

impl PartialOrd for AgentVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if let Some(timestamp) = &self.timestamp {
            write!(f, ".{timestamp}")?;
        }
        Ok(())
    }
}

/// Parses `major.minor.revision.YYYYMMDD-HHMMSS`. The timestamp may be left out (`1.277.0`), as in image
/// tags; anything else is an error that names the offending part.
pub fn parse_version(version: &str) -> Result<AgentVersion, DesiredError> {
    let invalid = |reason: String| DesiredError::InvalidVersion {
        version: version.to_owned(),
        reason,
    };
    let parts: Vec<&str> = version.split('.').collect();
    if !(3..=4).contains(&parts.len()) {
        return Err(invalid(format!(
            "it has {} dot-separated parts, not 3 or 4",
            parts.len()
        )));
    }
    let number = |name: &str, part: &str| {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("the {name} {part:?} is not a number")));
        }
        part.parse::<u64>()
            .map_err(|_| invalid(format!("the {name} {part:?} is too large")))
    };
    let timestamp = match parts.get(3) {
        None => None,
        Some(ts) if is_timestamp(ts) => Some((*ts).to_owned()),
        Some(ts) => {
            return Err(invalid(format!(
                "the build timestamp {ts:?} is not of the form YYYYMMDD-HHMMSS"
            )));
        }
    };
    Ok(AgentVersion {
        major: number("major version", parts[0])?,
        minor: number("minor version", parts[1])?,
        revision: number("revision", parts[2])?,
        timestamp,
    })
}

fn is_timestamp(ts: &str) -> bool {
    let bytes = ts.as_bytes();
    bytes.len() == 15 && bytes[8] == b'-' && bytes[..8].iter().chain(&bytes[9..]).all(u8::is_ascii_digit)
}

/// Whether moving from `current` to `target` is a downgrade (`target` is older). Returns false when either
/// version cannot be parsed (for example an empty `current` before the first rollout): an unknown
/// version never blocks an update.
pub fn is_downgrade(current: &str, target: &str) -> bool {
    match (parse_version(current), parse_version(target)) {
        (Ok(current), Ok(target)) => target < current,
        _ => false,
    }
}

/// The image tag for a OneAgent version: `latest` without a version (or an empty one), else its first
/// three dot-separated parts (`1.277.0.20230914-094321` → `1.277.0`).
pub fn image_tag(version: Option<&str>) -> String {
    match version.filter(|v| !v.is_empty()) {
        None => "latest".to_owned(),
        Some(v) => v.split('.').take(3).collect::<Vec<_>>().join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> AgentVersion {
        parse_version(s).unwrap()
    }

    #[test]
    fn parses_full_and_three_part_versions() {
        assert_eq!(
            v("1.277.0.20230914-094321"),
            AgentVersion {
                major: 1,
                minor: 277,
                revision: 0,
                timestamp: Some("20230914-094321".into())
            }
        );
        assert_eq!(v("1.277.0").timestamp, None);
        assert_eq!(
            v("1.277.0.20230914-094321").to_string(),
            "1.277.0.20230914-094321"
        );
    }

    #[test]
    fn rejects_malformed_versions_naming_the_part() {
        for (input, needle) in [
            ("", "1 dot-separated parts"),
            ("1.2", "2 dot-separated parts"),
            ("1.2.3.4.5", "5 dot-separated parts"),
            ("1.x.3", "minor version \"x\""),
            ("1.2.-3", "revision \"-3\""),
            ("1..3", "minor version \"\""),
            ("1.2.3.2023-0914", "build timestamp"),
            ("1.2.3.20230914_094321", "build timestamp"),
            ("99999999999999999999.2.3", "too large"),
        ] {
            let err = parse_version(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(err.contains("major.minor.revision.YYYYMMDD-HHMMSS"), "{err}");
        }
    }

    #[test]
    fn compares_numbers_numerically_then_timestamps() {
        assert!(v("1.10.0.20230101-000000") > v("1.9.0.20240101-000000"));
        assert!(v("2.0.0.20200101-000000") > v("1.999.999.20300101-000000"));
        assert!(v("1.2.10.20200101-000000") > v("1.2.9.20200101-000000"));
        assert!(v("1.2.3.20230914-094322") > v("1.2.3.20230914-094321"));
        assert!(v("1.2.3.20230914-094321") > v("1.2.3"));
        assert_eq!(v("01.2.3").cmp(&v("1.2.3")), Ordering::Equal);
    }

    #[test]
    fn downgrade_only_when_both_parse_and_target_is_older() {
        assert!(is_downgrade("1.277.0.20230914-094321", "1.276.0.20230801-000000"));
        assert!(!is_downgrade(
            "1.276.0.20230801-000000",
            "1.277.0.20230914-094321"
        ));
        assert!(!is_downgrade(
            "1.277.0.20230914-094321",
            "1.277.0.20230914-094321"
        ));
        assert!(is_downgrade("1.9.1.20230101-000000", "1.9.0.20240101-000000"));
        assert!(!is_downgrade("", "1.277.0.20230914-094321"));
        assert!(!is_downgrade("1.277.0.20230914-094321", "garbage"));
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag(None), "latest");
        assert_eq!(image_tag(Some("")), "latest");
        assert_eq!(image_tag(Some("1.277.0.20230914-094321")), "1.277.0");
        assert_eq!(image_tag(Some("1.277.0")), "1.277.0");
    }
}
