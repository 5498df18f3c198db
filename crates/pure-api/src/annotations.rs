//! Pod annotations that code-module injection reads and writes (spec §3.4, §3.6, §3.7). One place for
//! each name: the mutating webhook sets them, the operator's missed-injection check reads them.

/// `"false"` keeps the webhook away from the pod altogether.
pub const INJECT: &str = "dynatrace.com/inject";
/// Whether the OneAgent code module is injected; defaults to the DynaKube's `automatic-injection` flag.
pub const ONEAGENT_INJECT: &str = "oneagent.dynatrace.com/inject";
/// Set by the webhook: `"true"` once the code module is injected, `"false"` (with [`ONEAGENT_REASON`]) when
/// the webhook saw the pod but could not inject it.
pub const ONEAGENT_INJECTED: &str = "oneagent.dynatrace.com/injected";
/// Why the webhook left the code module out ([`ONEAGENT_INJECTED`] `"false"`), e.g. `EmptyConnectionInfo`.
pub const ONEAGENT_REASON: &str = "oneagent.dynatrace.com/reason";
/// Whether metadata enrichment is injected; defaults to the DynaKube's `automatic-injection` flag.
pub const DATA_INGEST_INJECT: &str = "data-ingest.dynatrace.com/inject";
/// Set by the webhook to `"true"` once metadata enrichment is injected.
pub const DATA_INGEST_INJECTED: &str = "data-ingest.dynatrace.com/injected";
/// Set by the webhook to `"true"` on every pod it changed.
pub const DYNAKUBE_INJECTED: &str = "dynakube.dynatrace.com/injected";
/// One of the two annotations of OpenShift debug pods, which are never injected.
pub const OPENSHIFT_DEBUG_CONTAINER: &str = "debug.openshift.io/source-container";
/// The other annotation of OpenShift debug pods.
pub const OPENSHIFT_DEBUG_RESOURCE: &str = "debug.openshift.io/source-resource";

/// An annotation value read with Go's `strconv.ParseBool` rules, as the reference reads them: `None` when
/// it is not a boolean.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_follow_go_parse_bool() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for neither in ["", "yes", "tRue", " true"] {
            assert_eq!(parse_bool(neither), None, "{neither:?}");
        }
    }
}
