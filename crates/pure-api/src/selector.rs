//! Label selectors as Kubernetes evaluates them, and the syntax rules for label keys and values.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Why a label selector is invalid; each message names the offending part.
pub fn selector_problems(selector: &LabelSelector) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        problems.extend(label_key_problem(key).map(|p| format!("matchLabels key {key:?}: {p}")));
        problems.extend(
            label_value_problem(value).map(|p| format!("matchLabels value {value:?} of {key:?}: {p}")),
        );
    }
    for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("matchExpressions[{i}]");
        problems.extend(
            label_key_problem(&expression.key).map(|p| format!("{at}.key {:?}: {p}", expression.key)),
        );
        let values = expression.values.as_deref().unwrap_or_default();
        match expression.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                problems.push(format!(
                    "{at}: operator {} needs at least one value",
                    expression.operator
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                problems.push(format!("{at}: operator {} takes no values", expression.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => problems.push(format!(
                "{at}: unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
            )),
        }
        for value in values {
            problems.extend(label_value_problem(value).map(|p| format!("{at} value {value:?}: {p}")));
        }
    }
    problems
}

/// Whether `selector` selects an object with `labels`. An empty selector selects everything. Call
/// [`selector_problems`] first: an invalid expression never matches.
pub fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_match
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Whether a `nodeSelector` map selects a node with `labels`.
pub fn node_selector_matches(node_selector: &Labels, labels: &Labels) -> bool {
    node_selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// What is wrong with a label key (`[prefix/]name`), if anything.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && let Some(problem) = dns1123_subdomain_problem(prefix)
    {
        return Some(format!("prefix {problem}"));
    }
    if name.is_empty() {
        return Some("the name part must not be empty".to_owned());
    }
    qualified_name_problem(name, 63)
}

/// What is wrong with a label value, if anything (empty values are allowed).
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        qualified_name_problem(value, 63)
    }
}

fn qualified_name_problem(name: &str, max: usize) -> Option<String> {
    if name.len() > max {
        return Some(format!("must be at most {max} characters"));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok_inner = name.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    let ok_ends = name.starts_with(alnum) && name.ends_with(alnum);
    (!(ok_inner && ok_ends)).then(|| {
        "must consist of alphanumeric characters, '-', '_' or '.', and start and end with an alphanumeric \
         character"
            .to_owned()
    })
}

fn dns1123_subdomain_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some("must be 1 to 253 characters".to_owned());
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (!name.split('.').all(label_ok))
        .then(|| "must be a DNS subdomain: lowercase letters, digits, '-' and '.'".to_owned())
}

/// Whether `name` is a DNS-1035 label: at most 63 characters of `[a-z0-9-]`, starting with a letter and
/// ending with a letter or digit.
pub fn is_dns1035_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        assert!(selector_matches(
            &LabelSelector::default(),
            &labels(&[("a", "1")])
        ));
    }

    #[test]
    fn match_labels_and_every_operator() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            match_expressions: Some(vec![
                expression("env", "In", &["prod", "stage"]),
                expression("tier", "NotIn", &["db"]),
                expression("inject", "Exists", &[]),
                expression("skip", "DoesNotExist", &[]),
            ]),
        };
        assert!(selector_problems(&selector).is_empty());
        let good = labels(&[("team", "a"), ("env", "prod"), ("inject", "")]);
        assert!(selector_matches(&selector, &good));
        for bad in [
            labels(&[("team", "b"), ("env", "prod"), ("inject", "")]),
            labels(&[("team", "a"), ("env", "dev"), ("inject", "")]),
            labels(&[("team", "a"), ("env", "prod"), ("inject", ""), ("tier", "db")]),
            labels(&[("team", "a"), ("env", "prod")]),
            labels(&[("team", "a"), ("env", "prod"), ("inject", ""), ("skip", "1")]),
        ] {
            assert!(!selector_matches(&selector, &bad), "{bad:?}");
        }
    }

    #[test]
    fn invalid_selectors_are_reported_with_their_part() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("bad key!", "ok"), ("ok", "-bad")])),
            match_expressions: Some(vec![
                expression("a", "Equals", &["x"]),
                expression("b", "In", &[]),
                expression("c", "Exists", &["x"]),
            ]),
        };
        let problems = selector_problems(&selector);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].contains("\"bad key!\""));
        assert!(problems.iter().any(|p| p.contains("unknown operator \"Equals\"")));
        assert!(problems.iter().any(|p| p.contains("needs at least one value")));
        assert!(problems.iter().any(|p| p.contains("takes no values")));
    }

    #[test]
    fn label_syntax() {
        assert_eq!(label_key_problem("kubernetes.io/os"), None);
        assert_eq!(label_key_problem("app"), None);
        assert!(label_key_problem("Bad_Prefix/x").is_some());
        assert!(label_key_problem("x/").is_some());
        assert!(label_key_problem(&"a".repeat(64)).is_some());
        assert_eq!(label_value_problem(""), None);
        assert!(label_value_problem("a b").is_some());
    }

    #[test]
    fn dns1035() {
        assert!(is_dynakube_name_ok("dynakube"));
        assert!(is_dynakube_name_ok("dk-1"));
        for bad in ["1dk", "Dk", "dk-", "d_k", ""] {
            assert!(!is_dynakube_name_ok(bad), "{bad}");
        }
        assert!(!is_dynakube_name_ok(&"a".repeat(64)));
    }

    fn is_dynakube_name_ok(name: &str) -> bool {
        is_dns1035_label(name)
    }

    #[test]
    fn node_selector_maps() {
        let node = labels(&[("kubernetes.io/os", "linux"), ("pool", "a")]);
        assert!(node_selector_matches(&labels(&[]), &node));
        assert!(node_selector_matches(&labels(&[("pool", "a")]), &node));
        assert!(!node_selector_matches(&labels(&[("pool", "b")]), &node));
    }
}
