//! Merging the environment's process-module configuration into `agent/conf/ruxitagentproc.conf`.
//!
//! The file is INI-like: `[section]` headers and `key value` lines (`#` starts a comment). A merge
//! replaces the value of a key that exists in its section, appends a new key at the end of its section,
//! appends a missing section at the end, and removes the key when the new value is empty. Every other line
//! (comments, blank lines, order) stays as it was, so the agent's own defaults survive.
//!
//! Merges always start from the pristine copy of the file ([`ORIGINAL_FILE`]), so a repeated merge gives
//! the same result and a key removed from the environment's configuration disappears again.

/// The agent's process-module configuration, relative to the install directory.
pub const CONF_FILE: &str = "agent/conf/ruxitagentproc.conf";
/// The pristine copy the merges start from, kept next to it on the first merge.
pub const ORIGINAL_FILE: &str = "agent/conf/_ruxitagentproc.conf";

/// One setting: section, key, value (empty removes the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// Section name without brackets, like `general`.
    pub section: String,
    /// Key.
    pub key: String,
    /// Value; empty removes the key.
    pub value: String,
}

impl Property {
    /// A property.
    pub fn new(section: &str, key: &str, value: &str) -> Self {
        Self {
            section: section.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }
}

/// The properties the init container merges: the environment's, then `[general] proxy` when a proxy is
/// set and `[general] hostGroup` when a host group is set (the reference ignored the host group without
/// the CSI driver, weakness 13).
pub fn init_properties(from_tenant: Vec<Property>, proxy: &str, host_group: &str) -> Vec<Property> {
    let mut properties = from_tenant;
    if !proxy.is_empty() {
        properties.push(Property::new("general", "proxy", proxy));
    }
    if !host_group.is_empty() {
        properties.push(Property::new("general", "hostGroup", host_group));
    }
    properties
}

#[derive(Debug)]
struct Line {
    text: String,
    /// The section this line belongs to (`None` before the first header).
    section: Option<String>,
    /// For `key value` lines, the key.
    key: Option<String>,
}

fn header(line: &str) -> Option<&str> {
    let line = line.trim();
    line.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

fn key_of(line: &str) -> Option<&str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
        return None;
    }
    line.split_whitespace().next()
}

/// `original` with `properties` merged in, in their order (a later property for the same key wins).
pub fn merge(original: &str, properties: &[Property]) -> String {
    let mut lines: Vec<Line> = Vec::new();
    let mut section: Option<String> = None;
    for text in original.lines() {
        if let Some(name) = header(text) {
            section = Some(name.to_owned());
            lines.push(Line {
                text: text.to_owned(),
                section: section.clone(),
                key: None,
            });
            continue;
        }
        lines.push(Line {
            text: text.to_owned(),
            section: section.clone(),
            key: key_of(text).map(str::to_owned),
        });
    }
    for property in properties {
        let in_section = |line: &Line| line.section.as_deref() == Some(property.section.as_str());
        let existing = lines
            .iter()
            .position(|l| in_section(l) && l.key.as_deref() == Some(property.key.as_str()));
        let text = format!("{} {}", property.key, property.value);
        match (existing, property.value.is_empty()) {
            (Some(index), true) => {
                lines.remove(index);
                // Later duplicates of the key go too.
                lines.retain(|l| !(in_section(l) && l.key.as_deref() == Some(property.key.as_str())));
            }
            (Some(index), false) => lines[index].text = text,
            (None, true) => {}
            (None, false) => {
                let line = Line {
                    text,
                    section: Some(property.section.clone()),
                    key: Some(property.key.clone()),
                };
                match lines
                    .iter()
                    .rposition(|l| in_section(l) && !l.text.trim().is_empty())
                {
                    Some(last) => lines.insert(last + 1, line),
                    None => {
                        if lines.last().is_some_and(|l| !l.text.trim().is_empty()) {
                            lines.push(Line {
                                text: String::new(),
                                section: None,
                                key: None,
                            });
                        }
                        lines.push(Line {
                            text: format!("[{}]", property.section),
                            section: Some(property.section.clone()),
                            key: None,
                        });
                        lines.push(line);
                    }
                }
            }
        }
    }
    let mut out = String::with_capacity(original.len() + 64 * properties.len());
    for line in &lines {
        out.push_str(&line.text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORIGINAL: &str = "\
# agent defaults
[general]
storage /var/lib/dynatrace/oneagent
tenant placeholder

[java]
agentActive true
";

    #[test]
    fn replaces_appends_removes_and_keeps_the_rest() {
        let merged = merge(
            ORIGINAL,
            &[
                Property::new("general", "tenant", "abc12345"),
                Property::new("general", "proxy", "http://proxy:3128"),
                Property::new("java", "agentActive", ""),
                Property::new("nodejs", "agentActive", "false"),
                Property::new("general", "unknown", ""),
            ],
        );
        assert_eq!(
            merged,
            "\
# agent defaults
[general]
storage /var/lib/dynatrace/oneagent
tenant abc12345
proxy http://proxy:3128

[java]

[nodejs]
agentActive false
"
        );
    }

    #[test]
    fn the_same_key_in_another_section_is_another_key() {
        let merged = merge(ORIGINAL, &[Property::new("java", "storage", "x")]);
        assert!(
            merged.contains("storage /var/lib/dynatrace/oneagent\n"),
            "{merged}"
        );
        assert!(merged.contains("agentActive true\nstorage x\n"), "{merged}");
    }

    #[test]
    fn an_empty_file_gets_the_sections() {
        assert_eq!(
            merge("", &[Property::new("general", "hostGroup", "prod")]),
            "[general]\nhostGroup prod\n"
        );
    }

    #[test]
    fn proxy_and_host_group_come_last_and_only_when_set() {
        let tenant = vec![Property::new("general", "hostGroup", "from-tenant")];
        let props = init_properties(tenant.clone(), "", "");
        assert_eq!(props, tenant);
        let props = init_properties(tenant, "http://p:1", "prod");
        let merged = merge(ORIGINAL, &props);
        assert!(
            merged.contains("hostGroup prod\n") && !merged.contains("from-tenant"),
            "{merged}"
        );
        assert!(merged.contains("proxy http://p:1\n"), "{merged}");
    }

    proptest! {
        /// Every set key has its last value, and merging the result again changes no setting (only, where a
        /// key was removed and set again, its position).
        #[test]
        fn merge_sets_every_key(
            props in proptest::collection::vec(("[ab]", "[xyz]", "[0-9]{0,2}"), 0..8),
        ) {
            let props: Vec<Property> = props.iter().map(|(s, k, v)| Property::new(s, k, v)).collect();
            let once = merge(ORIGINAL, &props);
            let sorted = |text: &str| { let mut l: Vec<String> = text.lines().map(str::to_owned).collect(); l.sort(); l };
            prop_assert_eq!(sorted(&merge(&once, &props)), sorted(&once));
            let mut last = std::collections::BTreeMap::new();
            for p in &props {
                last.insert((p.section.clone(), p.key.clone()), p.value.clone());
            }
            for ((section, key), value) in last {
                let wanted = format!("{key} {value}");
                let mut current = None;
                let mut found = false;
                for line in once.lines() {
                    if let Some(h) = header(line) { current = Some(h.to_owned()); continue; }
                    if current.as_deref() == Some(section.as_str()) && line == wanted { found = true; }
                }
                prop_assert_eq!(found, !value.is_empty(), "{}", once);
            }
        }
    }
}
