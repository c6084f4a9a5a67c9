//! LUKS1 header
