//! vmcrypt's secret store: libvirt's secret model (UUID, description, usage,
//! ephemeral/private; [`xml`]) kept in a directory ([`store`]) with each value sealed by
//! an AEAD under a master key ([`seal`], key sources in [`master`]), and pushed into a
//! running libvirt ([`libvirt`]).
//!
//! The trust boundary differs from `vmcrypt-block`'s: this crate holds the master key and
//! the sealed values, so it stays a crate of its own; the CLI hands `vmcrypt-block` only
//! the one value an image needs. Public API: [`Store`], [`SecretDef`], [`Usage`],
//! [`Uuid`], [`MasterKeyConfig`], [`MasterKey`], base64 helpers, [`libvirt::push`].
#![forbid(unsafe_code)]

mod files;
pub mod libvirt;
pub mod master;
pub mod seal;
pub mod store;
pub mod uuid;
pub mod xml;

pub use master::MasterKeyConfig;
pub use seal::MasterKey;
pub use store::{Defined, Listed, Store};
pub use uuid::Uuid;
pub use xml::{SecretDef, Usage};

use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result};

/// Standard base64 with padding, what `virsh secret-get-value` prints.
pub fn base64_encode(bytes: &[u8]) -> zeroize::Zeroizing<String> {
    use base64ct::Encoding;
    zeroize::Zeroizing::new(base64ct::Base64::encode_string(bytes))
}

/// Decode base64 (whitespace around it ignored), what `virsh secret-set-value` takes.
pub fn base64_decode(text: &[u8]) -> Result<SecretBytes> {
    use base64ct::Encoding;
    let s =
        std::str::from_utf8(text).map_err(|_| Error::usage("secret value is not valid base64"))?;
    base64ct::Base64::decode_vec(s.trim())
        .map(SecretBytes::new)
        .map_err(|_| Error::usage("secret value is not valid base64"))
}
