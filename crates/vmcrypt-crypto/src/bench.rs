//! In-process throughput measurements for `vmcrypt bench` (like `cryptsetup benchmark`).
