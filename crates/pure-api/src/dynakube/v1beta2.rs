//! `dynatrace.com/v1beta2` DynaKube (first served by the reference's v1.2.0). Compared with v1beta1: the
//! `namespaceSelector` moves into each app-injection mode, and `oneAgent.hostGroup`, `metadataEnrichment`,
//! `dynatraceApiRequestThreshold` and `secCompProfile` are new; the deprecated `routing` and
//! `kubernetesMonitoring` sections are gone. A spoke around the internal model, see [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, UseCsiDriver, dynakube_version};

/// The OneAgent modes of v1beta2.
pub type OneAgent = OneAgentSpec<Nothing, UseCsiDriver>;

dynakube_version!(version = "v1beta2", one_agent = OneAgent, sections = Nothing);
