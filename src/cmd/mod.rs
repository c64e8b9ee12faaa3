//! One module per command.

pub mod bench;
pub mod cache;
pub mod create;
pub mod du;
pub mod fork;
pub mod gc;
pub mod guest;
pub mod init;
pub mod instance;
pub mod list;
pub mod mount;
pub mod restore;
pub mod schedule;
pub mod serve;
pub mod tree;
pub mod verify;
