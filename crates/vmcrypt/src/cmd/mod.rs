//! Command implementations: each turns parsed flags into library calls and prints.
mod bench;
pub mod glue;
mod image;
pub mod luks;
pub mod serve;
mod tools;

use crate::cli::{Cli, Command, Common};
use serde_json::{Map, Value};
use std::sync::Arc;
use vmcrypt_block::BlockDriver;
use vmcrypt_block::graph::{self, OpenContext};
use vmcrypt_block::opts::{parse_keyval, parse_size};
use vmcrypt_block::secrets::SecretStore;
use vmcrypt_error::{Result, bail};

/// Run a parsed command; returns the exit status on success paths (check may return 2/3).
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Create {
            common,
            format,
            options,
            backing,
            backing_format,
            unsafe_backing,
            filename,
            size,
        } => image::create(
            &common,
            &format,
            &image::CreateArgs {
                options: &options,
                backing: backing.as_deref(),
                backing_format: backing_format.as_deref(),
                unsafe_backing,
            },
            filename.as_deref(),
            size.as_deref(),
        ),
        Command::Rebase {
            common,
            format,
            backing,
            backing_format,
            unsafe_mode,
            progress,
            filename,
        } => image::rebase(
            &common,
            &image::RebaseArgs {
                format: format.as_deref(),
                backing: &backing,
                backing_format: backing_format.as_deref(),
                unsafe_mode,
                progress,
            },
            &filename,
        ),
        Command::Info {
            common,
            format,
            output,
            backing_chain,
            filename,
        } => image::info(
            &common,
            format.as_deref(),
            &output,
            backing_chain,
            &filename,
        ),
        Command::Convert {
            common,
            format,
            out_format,
            options,
            no_create,
            target_image_opts,
            progress,
            cache,
            src_cache,
            source,
            target,
        } => {
            let _ = (cache, src_cache);
            image::convert(&image::ConvertArgs {
                common: &common,
                format: format.as_deref(),
                out_format: &out_format,
                options: &options,
                no_create,
                target_image_opts,
                progress,
                source: source.as_deref(),
                target: target.as_deref(),
            })
        }
        Command::Check {
            common,
            format,
            output,
            repair,
            filename,
        } => image::check(
            &common,
            format.as_deref(),
            &output,
            repair.as_deref(),
            &filename,
        ),
        Command::Resize {
            common,
            format,
            shrink,
            filename,
            size,
        } => image::resize(&common, format.as_deref(), shrink, &filename, &size),
        Command::Commit {
            common,
            format,
            keep,
            progress,
            filename,
        } => image::commit(&common, format.as_deref(), keep, progress, &filename),
        Command::Map {
            common,
            format,
            output,
            start_offset,
            max_length,
            filename,
        } => tools::map(&tools::MapArgs {
            common: &common,
            format: format.as_deref(),
            output: &output,
            start: parse_size(&start_offset)?,
            max_length: max_length.as_deref().map(parse_size).transpose()?,
            filename: &filename,
        }),
        Command::Compare {
            common,
            format1,
            format2,
            strict,
            image1,
            image2,
        } => tools::compare_images(&tools::CompareArgs {
            common: &common,
            format1: format1.as_deref(),
            format2: format2.as_deref(),
            strict,
            image1: &image1,
            image2: &image2,
        }),
        Command::Luks { command } => luks::run(command),
        Command::Bench { seconds } => bench::run(seconds),
        Command::Serve(args) => serve::run(&args),
        Command::Libvirt { command } => glue::libvirt(&command),
        Command::QemuArgs(args) => glue::qemu_args(&args),
    }
}

/// Secrets from every `--object`.
pub fn secrets(common: &Common) -> Result<SecretStore> {
    let mut s = SecretStore::new();
    for o in &common.objects {
        s.add_object(o)?;
    }
    Ok(s)
}

/// The graph description of an image argument (`--image-opts`, `json:`, or a filename
/// with an optional `-f`).
pub fn image_spec(common: &Common, format: Option<&str>, name: &str) -> Result<Map<String, Value>> {
    let mut spec = if common.image_opts {
        if format.is_some() {
            bail!(Usage, "--image-opts and -f are mutually exclusive");
        }
        parse_keyval(name, None)?
    } else {
        graph::spec_from_filename(name, format)?
    };
    if common.force_share {
        graph::disable_locking(&mut spec);
    }
    Ok(spec)
}

/// How the command line's images are opened: its secrets and KDF limits, backing files
/// read-only.
pub fn open_ctx<'a>(
    common: &Common,
    secrets: &'a SecretStore,
    read_only: bool,
    metadata_only: bool,
) -> OpenContext<'a> {
    OpenContext {
        secrets,
        read_only,
        metadata_only,
        limits: common.limits.limits(),
        writable_backing: false,
    }
}

/// Open an image argument.
pub fn open_image(
    common: &Common,
    format: Option<&str>,
    name: &str,
    secrets: &SecretStore,
    read_only: bool,
    metadata_only: bool,
) -> Result<Arc<dyn BlockDriver>> {
    let spec = image_spec(common, format, name)?;
    if !common.quiet
        && let Ok(Some("raw")) = graph::probed_format(&spec)
    {
        eprintln!(
            "WARNING: Image format was not specified for '{name}' and probing guessed raw.\n         \
             Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
             Specify the 'raw' format explicitly to remove the restrictions."
        );
    }
    graph::open(&spec, &open_ctx(common, secrets, read_only, metadata_only))
}
