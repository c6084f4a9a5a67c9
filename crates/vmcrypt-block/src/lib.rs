//! Block graph
#![forbid(unsafe_code)]
