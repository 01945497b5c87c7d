//! The CNI protocol: [`skel`] (the process boundary and dispatch), [`spec`] (wire types, versions, result
//! conversion) and [`conf`] (configuration decoding and validation, no I/O).

pub mod conf;
pub mod skel;
pub mod spec;
