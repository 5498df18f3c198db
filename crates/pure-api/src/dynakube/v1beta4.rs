//! `dynatrace.com/v1beta4` DynaKube (first served by the reference's v1.5.0): v1beta3 plus `telemetryIngest`
//! and `storageHostPath`. A spoke around the internal model, see [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, StorageHostPath, V1beta4Sections, dynakube_version};

/// The OneAgent modes of v1beta4.
pub type OneAgent = OneAgentSpec<StorageHostPath, Nothing>;

dynakube_version!(
    version = "v1beta4",
    one_agent = OneAgent,
    sections = V1beta4Sections
);
