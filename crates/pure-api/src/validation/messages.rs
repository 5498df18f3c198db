//! The fixed texts of validation errors; the ones with details are built in the rules.

/// The API URL is missing or the documentation's placeholder.
pub const NO_API_URL: &str = "The DynaKube's specification is missing the API URL or still has the example value set \
(spec.apiUrl). Make sure you correctly specify the URL of your Dynatrace environment in your custom resource, \
for example https://<environment-id>.live.dynatrace.com/api.";

/// More than one OneAgent mode.
pub const CONFLICTING_ONE_AGENT_MODES: &str = "The DynaKube's specification tries to use multiple OneAgent modes at \
the same time, which is not supported. Set exactly one of spec.oneAgent.classicFullStack, cloudNativeFullStack, \
applicationMonitoring or hostMonitoring.";

/// applicationMonitoring names a code-modules image but does not use the CSI driver.
pub const CODE_MODULES_IMAGE_WITHOUT_CSI: &str = "spec.oneAgent.applicationMonitoring.codeModulesImage is set, but \
code modules from an image are provided by the CSI driver, which this DynaKube does not use. Set \
spec.oneAgent.applicationMonitoring.useCSIDriver: true, or remove codeModulesImage.";

/// The DynaKube's name cannot be used in derived object names.
pub const NAME_VIOLATES_DNS1035: &str = "The DynaKube's name violates DNS-1035: it must be at most 63 characters of \
lowercase letters, digits and '-', start with a letter and end with a letter or digit (regex \
[a-z]([-a-z0-9]*[a-z0-9])?). The name is used for the objects the operator creates; rename the DynaKube.";

/// The read-only host file system is off while several OneAgents per node are allowed.
pub const READONLY_FS_DISABLED_WITH_MULTIPLE_OSAGENTS: &str = "The DynaKube sets \
feature.dynatrace.com/multiple-osagents-on-node: \"true\", which needs OneAgents with a read-only host file \
system, but feature.dynatrace.com/oneagent-readonly-host-fs is \"false\". Remove one of the two annotations.";

/// Header of a denial of a `kind` object; `count` errors follow.
pub fn denial_header(count: usize, kind: &str) -> String {
    format!("{count} error(s) found in the {kind}")
}
