//! `dynatrace.com/v1beta5` DynaKube (first served by the reference's v1.8.0): the fields of v1beta4 (the
//! reference changed only Go types). A spoke around the internal model, see [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, StorageHostPath, V1beta4Sections, dynakube_version};

/// The OneAgent modes of v1beta5.
pub type OneAgent = OneAgentSpec<StorageHostPath, Nothing>;

dynakube_version!(
    version = "v1beta5",
    one_agent = OneAgent,
    sections = V1beta4Sections
);
