//! Glue for virtual machines: what QEMU or libvirt need to use an image.
//!
//! * [`qemu_args`]: the `-object secret` and `-blockdev` arguments with which QEMU opens
//!   an image natively (LUKS1, detached-header LUKS1 over a raw or qcow2 payload, raw,
//!   and qcow2 with LUKS encryption, backing chains included: one `-blockdev` per layer,
//!   each with its own `encrypt.key-secret`, linked by `backing=NODE`). LUKS2 is
//!   refused: QEMU cannot open it, so it has to go through `vmcrypt serve` and NBD.
//! * [`libvirt`]: the libvirt `<disk>` element for an export of `vmcrypt serve`.
//! * [`print`]: a node spec in QEMU's `-blockdev` syntaxes, and shell quoting.
pub mod libvirt;
pub mod print;
pub mod qemu_args;
mod qemu_check;
