//! The single error type used across vmcrypt.
//!
//! An [`Error`] carries a machine-readable [`ErrorKind`] (which the CLI maps to an exit
//! code and tests match on), an optional [`Reason`] (a finer, typed cause for the few
//! places where code decides on more than the kind; never match the message text),
//! a human-readable message naming what is wrong, an optional chain of context strings ("while opening key slot 3", "in header file X") and an
//! optional source error. `Display` prints context outermost-first followed by the
//! message; it never repeats the source's text, which is reachable through
//! [`std::error::Error::source`].
#![forbid(unsafe_code)]

use std::fmt;

/// What class of failure this is. Stable: tests and the CLI match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The user asked for something malformed (bad option, bad syntax).
    Usage,
    /// No key slot accepted the passphrase (or the given slot did not).
    WrongKey,
    /// On-disk data is corrupt, truncated or violates the format.
    Corrupt,
    /// A valid format feature or algorithm that vmcrypt does not implement.
    Unsupported,
    /// A request outside the image (offset/length beyond the end, bad alignment).
    OutOfRange,
    /// The operation would need to write, but the image or node is read-only.
    ReadOnly,
    /// A requested object does not exist (secret id, key slot, file).
    NotFound,
    /// The object already exists or the slot is in use.
    Busy,
    /// An operating-system I/O error.
    Io,
    /// A limit protecting us from hostile input was exceeded.
    LimitExceeded,
    /// An internal invariant broke; a bug.
    Internal,
}

impl ErrorKind {
    /// A short lowercase label for logs and JSON output.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Usage => "usage",
            ErrorKind::WrongKey => "wrong-key",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::OutOfRange => "out-of-range",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Busy => "busy",
            ErrorKind::Io => "io",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why an error happened, finer than its [`ErrorKind`], for code that must tell causes
/// apart (never by the message text, which is for people). Carried by [`Error`] when the
/// code producing it sets one ([`Error::with_reason`], `bail!(Kind(Reason), ...)`);
/// contexts and sources added later keep it. New reasons are added as callers need them.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The data does not start with the format's magic: not this format at all (as
    /// opposed to a damaged header of the right format).
    BadMagic,
    /// The operation would remove the last key slot, leaving the volume unusable.
    LastKeySlot,
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The vmcrypt error: kind + optional reason + message + context chain + optional source.
pub struct Error {
    kind: ErrorKind,
    reason: Option<Reason>,
    message: String,
    context: Vec<String>,
    source: Option<Source>,
}

/// Result alias used throughout vmcrypt.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` whose message says what is wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            reason: None,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Shorthand constructors, one per kind.
    pub fn usage(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, m)
    }
    pub fn wrong_key(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::WrongKey, m)
    }
    pub fn corrupt(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, m)
    }
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, m)
    }
    pub fn out_of_range(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfRange, m)
    }
    pub fn read_only(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn busy(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, m)
    }
    pub fn limit(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::LimitExceeded, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }

    /// An I/O error with a message naming what was being done ("reading header of X").
    pub fn io(err: std::io::Error, what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Io, what).with_source(err)
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Tag the error with a typed [`Reason`] for callers that decide on it.
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Add an outer context line ("opening image foo.luks").
    pub fn context(mut self, ctx: impl Into<String>) -> Self {
        self.context.push(ctx.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The typed reason, when the code that produced the error set one.
    pub fn reason(&self) -> Option<Reason> {
        self.reason
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Context lines, innermost first.
    pub fn contexts(&self) -> &[String] {
        &self.context
    }

    /// The message followed by every source's text, for a CLI that prints one line.
    pub fn display_chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.context.iter().rev() {
            write!(f, "{c}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.kind, self.display_chain())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Adds `.ctx("...")` to any `Result<T, Error>`.
pub trait ResultExt<T> {
    fn ctx(self, ctx: impl Into<String>) -> Result<T>;
    fn with_ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn ctx(self, ctx: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.context(ctx))
    }
    fn with_ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

/// Return early with an error of the given kind: `bail!(Corrupt, "bad magic {x}")`, or
/// of a kind and a [`Reason`]: `bail!(Corrupt(BadMagic), "bad magic {x}")`.
#[macro_export]
macro_rules! bail {
    ($kind:ident ($reason:ident), $($arg:tt)*) => {
        return Err(
            $crate::Error::new($crate::ErrorKind::$kind, format!($($arg)*))
                .with_reason($crate::Reason::$reason),
        )
    };
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::Error::new($crate::ErrorKind::$kind, format!($($arg)*)))
    };
}

/// `ensure!(cond, Corrupt, "...")` or `ensure!(cond, Busy(LastKeySlot), "...")`: bail
/// unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $kind:ident ($reason:ident), $($arg:tt)*) => {
        if !($cond) {
            $crate::bail!($kind($reason), $($arg)*);
        }
    };
    ($cond:expr, $kind:ident, $($arg:tt)*) => {
        if !($cond) {
            $crate::bail!($kind, $($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_outer_context_first_and_hides_source() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::io(io, "reading LUKS header").context("opening a.luks");
        assert_eq!(e.to_string(), "opening a.luks: reading LUKS header");
        assert_eq!(
            e.display_chain(),
            "opening a.luks: reading LUKS header: disk on fire"
        );
        assert_eq!(e.kind(), ErrorKind::Io);
    }

    #[test]
    fn bail_and_ensure_produce_kind() {
        fn f(x: u32) -> Result<()> {
            ensure!(x < 3, LimitExceeded, "x={x} too big");
            Ok(())
        }
        assert!(f(1).is_ok());
        let e = f(5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert_eq!(e.message(), "x=5 too big");
        assert_eq!(e.reason(), None);
    }

    #[test]
    fn bail_and_ensure_set_the_reason() {
        fn f(x: u32) -> Result<()> {
            ensure!(x != 1, Busy(LastKeySlot), "slot {x} is the last key slot");
            if x == 2 {
                bail!(Corrupt(BadMagic), "no magic at {x}");
            }
            Ok(())
        }
        assert!(f(0).is_ok());
        let e = f(1).unwrap_err();
        assert_eq!(
            (e.kind(), e.reason()),
            (ErrorKind::Busy, Some(Reason::LastKeySlot))
        );
        assert_eq!(e.message(), "slot 1 is the last key slot");
        let e = f(2).unwrap_err();
        assert_eq!(
            (e.kind(), e.reason()),
            (ErrorKind::Corrupt, Some(Reason::BadMagic))
        );
        assert_eq!(e.to_string(), "no magic at 2");
    }

    #[test]
    fn reason_survives_context_and_source_and_leaves_text_alone() {
        let plain = Error::corrupt("no header");
        let e = Error::corrupt("no header")
            .with_reason(Reason::BadMagic)
            .with_source(std::io::Error::other("inner"))
            .context("opening d.img");
        assert_eq!(e.reason(), Some(Reason::BadMagic));
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.to_string(), "opening d.img: no header");
        assert_eq!(e.display_chain(), "opening d.img: no header: inner");
        assert_eq!(format!("{plain:?}"), "Error(Corrupt: no header)");
        assert_eq!(plain.reason(), None);
    }
}
