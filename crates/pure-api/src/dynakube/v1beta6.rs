//! `dynatrace.com/v1beta6` DynaKube, the reference's current version: the fields of v1beta5. A spoke around
//! the internal model, see [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, StorageHostPath, V1beta4Sections, dynakube_version};

/// The OneAgent modes of v1beta6.
pub type OneAgent = OneAgentSpec<StorageHostPath, Nothing>;

dynakube_version!(
    version = "v1beta6",
    one_agent = OneAgent,
    sections = V1beta4Sections
);
