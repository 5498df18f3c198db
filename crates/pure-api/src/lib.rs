//! The operator's API: the `DynaKube` and legacy `OneAgent` custom resources, their CRDs, conversion between
//! DynaKube versions, and the validation rules. Pure: nothing here does I/O, so every rule is tested with
//! plain values.

pub mod annotations;
pub mod crd;
pub mod dynakube;
pub mod oneagent;
pub mod selector;
pub mod storage_migration;
pub mod validation;
