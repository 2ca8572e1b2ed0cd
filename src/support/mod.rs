//! Small shared pieces that every layer may use and that use nothing of ours.

pub mod duration;
pub mod jsonpath;
pub mod text;
