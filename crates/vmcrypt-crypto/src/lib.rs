//! Cryptography for vmcrypt: everything that turns keys and sectors into other bytes.
//!
//! * [`hash`]: the hash algorithms LUKS headers name (sha1 .. sha512, ripemd160, whirlpool,
//!   the kernel's truncated wp256/wp384/wp512).
//! * [`kdf`]: PBKDF2 over any of those hashes, plus iteration benchmarking.
//! * [`argon`]: Argon2i/Argon2id for LUKS2 key slots, header cost limits, calibration.
//! * [`af`]: the LUKS anti-forensic splitter (split on key-slot write, merge on unlock).
//! * [`spec`]: cipher specifications (`aes` + `xts-plain64`, QEMU's `aes-256`/`xts`/`plain64`).
//! * [`sector`]: [`SectorCipher`], a keyed cipher that encrypts/decrypts runs of sectors.
//! * [`lrw`]: the GF(2^128) tweak arithmetic of the kernel's LRW mode.
//! * [`aes_xts`]: the fast AES-XTS kernels and the [`aes_xts::Kernel`] choice, and
//!   [`aes_cbc`]: fast AES-CBC decryption, and `sha256_ni` / `sha256_mb`: SHA-256 of
//!   many blocks two at a time on SHA-NI / sixteen at a time on AVX-512; the only
//!   modules allowed to use `unsafe`.
//! * [`sha256_kernel`]: which of those SHA-256 kernels [`HashAlg::digest_each`] runs
//!   ([`sha256_kernel::Sha256Kernel`], `VMCRYPT_SHA256_KERNEL`).
//! * [`secret`]: [`SecretBytes`], key material that is zeroized on drop.
//! * [`random`]: the OS random number generator.
//!
//! No I/O happens here besides reading the OS RNG.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod aes_cbc;
#[allow(unsafe_code)]
pub mod aes_xts;
pub mod af;
pub mod argon;
pub mod bench;
pub mod bench_select;
pub mod bench_suite;
mod blockcipher;
pub mod hash;
pub mod kdf;
mod kernel_choice;
pub mod lrw;
pub mod random;
pub mod secret;
pub mod sector;
pub mod sha256_kernel;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sha256_mb;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sha256_ni;
pub mod spec;

pub use hash::HashAlg;
pub use secret::SecretBytes;
pub use sector::SectorCipher;
pub use spec::{CipherFamily, CipherMode, CipherSpec, IvGen};
