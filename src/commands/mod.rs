//! The subcommands other than `run` (which is [`crate::daemon`]).

#[cfg(feature = "simulator")]
pub mod demo;
pub mod healthcheck;
pub mod import_state;
pub mod quarantine;
pub mod status;
pub mod verify;
