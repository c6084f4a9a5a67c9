//! CAST5 (CAST-128, 64-bit block, 128-bit key as LUKS uses).
