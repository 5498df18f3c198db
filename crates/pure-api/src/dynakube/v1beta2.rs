//! `dynatrace.com/v1beta2` DynaKube (first operator v1.2.0): the per-mode `namespaceSelector`, `oneAgent.hostGroup`, `metadataEnrichment`, `dynatraceApiRequestThreshold`, `secCompProfile`, and `applicationMonitoring.useCSIDriver`; the deprecated `routing` and `kubernetesMonitoring` sections are gone. A spoke around the internal model, see
//! [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, UseCsiDriver, dynakube_version};

/// The OneAgent modes of v1beta2.
pub type OneAgent = OneAgentSpec<Nothing, UseCsiDriver>;

dynakube_version!(version = "v1beta2", one_agent = OneAgent, sections = Nothing);
