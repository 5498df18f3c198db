//! `dynatrace.com/v1beta5` DynaKube (first operator v1.8.0): the same fields as v1beta4. A spoke around the internal model, see
//! [`super::conversion`].

use super::later::{Nothing, OneAgentSpec, StorageHostPath, V1beta4Sections, dynakube_version};

/// The OneAgent modes of v1beta5.
pub type OneAgent = OneAgentSpec<StorageHostPath, Nothing>;

dynakube_version!(
    version = "v1beta5",
    one_agent = OneAgent,
    sections = V1beta4Sections
);
