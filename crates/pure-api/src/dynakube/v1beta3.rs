//! `dynatrace.com/v1beta3` DynaKube (first served by the reference's v1.4.0): v1beta2 plus `logMonitoring`,
//! `kspm`, `extensions` and `templates`, without `applicationMonitoring.useCSIDriver` (the CSI driver is
//! used whenever it is installed). A spoke around the internal model, see [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, V1beta3Sections, dynakube_version};

/// The OneAgent modes of v1beta3.
pub type OneAgent = OneAgentSpec<Nothing, Nothing>;

dynakube_version!(
    version = "v1beta3",
    one_agent = OneAgent,
    sections = V1beta3Sections
);
