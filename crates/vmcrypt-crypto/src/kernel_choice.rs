//! What the run-time kernel choices share (the AES kernels of [`crate::aes_xts::Kernel`],
//! the SHA-256 kernels of [`crate::sha256_kernel::Sha256Kernel`]): lookup by name, the
//! fastest kernel this CPU can run, and the override by an environment variable.
use vmcrypt_error::{Error, ErrorKind, Result};

/// A set of interchangeable kernels, one chosen at run time.
pub(crate) trait KernelChoice: Copy + 'static {
    /// Every kernel, fastest first; the last runs everywhere.
    const ALL: &'static [Self];
    /// What the kernels compute, for messages ("AES", "SHA-256").
    const WHAT: &'static str;
    /// The environment variable that forces a kernel by name.
    const ENV: &'static str;
    /// The kernel's name, as the variable spells it.
    fn name(self) -> &'static str;
    /// Whether this CPU can run the kernel.
    fn available(self) -> bool;
}

/// The kernel called `name`; a usage error listing the known names otherwise.
pub(crate) fn from_name<K: KernelChoice>(name: &str) -> Result<K> {
    K::ALL
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            let names: Vec<_> = K::ALL.iter().map(|k| k.name()).collect();
            Error::usage(format!(
                "unknown {} kernel '{name}' (known: {})",
                K::WHAT,
                names.join(", ")
            ))
        })
}

/// The first kernel of `K::ALL` this CPU can run.
pub(crate) fn best<K: KernelChoice>() -> K {
    let last = K::ALL[K::ALL.len() - 1];
    K::ALL
        .iter()
        .copied()
        .find(|k| k.available())
        .unwrap_or(last)
}

/// The kernel a value of `K::ENV` names (an error if the name is unknown or the CPU
/// cannot run it), or [`best`] if the value is unset or blank.
pub(crate) fn from_setting<K: KernelChoice>(value: Option<&str>) -> Result<K> {
    match value.map(str::trim) {
        None | Some("") => Ok(best()),
        Some(name) => from_name(name).and_then(check_available).map_err(|e| {
            let msg = format!("{}={name}: {}", K::ENV, e.message());
            match e.kind() {
                ErrorKind::Usage => Error::usage(msg),
                _ => Error::unsupported(msg),
            }
        }),
    }
}

/// `k`, or an error naming it if this CPU cannot run it.
pub(crate) fn check_available<K: KernelChoice>(k: K) -> Result<K> {
    if k.available() {
        Ok(k)
    } else {
        Err(Error::unsupported(format!(
            "{} kernel {} is not supported by this CPU",
            K::WHAT,
            k.name()
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `from_setting` of `K`: blank is the best kernel, a name is that kernel if this CPU
    /// runs it (else an `Unsupported` error naming the variable), an unknown name a
    /// usage error.
    pub(crate) fn check_settings<K: KernelChoice + PartialEq + std::fmt::Debug>() {
        assert_eq!(from_setting::<K>(None).unwrap(), best::<K>());
        assert_eq!(from_setting::<K>(Some(" ")).unwrap(), best::<K>());
        for &k in K::ALL {
            match from_setting::<K>(Some(k.name())) {
                Ok(got) => assert!(k.available() && got == k, "{k:?}"),
                Err(e) => {
                    assert!(!k.available(), "{k:?}: {e}");
                    assert_eq!(e.kind(), ErrorKind::Unsupported);
                    assert!(e.message().contains(&format!("{}={}", K::ENV, k.name())));
                }
            }
        }
        let e = from_setting::<K>(Some("avx9")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        let want = format!(
            "{}=avx9: unknown {} kernel 'avx9' (known: ",
            K::ENV,
            K::WHAT
        );
        assert!(e.message().starts_with(&want), "{e}");
    }
}
