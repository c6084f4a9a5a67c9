//! `vmcrypt check` (qemu-img check): flags -> [`CheckRequest`] -> the check job ->
//! qemu-img's messages, report and exit status.
use super::common::{Output, ReportOpts, pretty};
use vmcrypt_block::jobs::check::{
    CheckOutcome, CheckRequest, Qcow2Check, parse_repair, run as check,
};
use vmcrypt_error::Result;

/// Flags of `vmcrypt check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub opts: ReportOpts,
    /// Repair qcow2 refcounts: leaks (lower leaked refcounts) or all (also raise
    /// too-low ones)
    #[arg(short = 'r', value_name = "leaks|all")]
    pub repair: Option<String>,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let output = a.opts.output()?;
    let repair = a.repair.as_deref().map(parse_repair).transpose()?;
    let (env, image) = a.opts.image.open_parts(&a.filename);
    let req = CheckRequest { image, repair };
    let outcome = check(&req, &env)?;
    match &outcome {
        CheckOutcome::Qcow2(q) => print_qcow2(q, output, a.opts.image.common.quiet, &a.filename),
        CheckOutcome::Driver(d) => match output {
            Output::Json => outln!("{}", pretty(&d.json(&a.filename))),
            Output::Human => out!("{}", d.human()),
        },
        CheckOutcome::NotSupported => {
            eprintln!("vmcrypt: This image format does not support checks");
        }
        // Like qemu-img, an image that cannot be checked (or repaired) exits with 1.
        CheckOutcome::Failed(e) => eprintln!("vmcrypt: Check failed: {}", e.display_chain()),
    }
    Ok(outcome.exit_code())
}

/// The qcow2 checker's messages on stderr, its report on stdout.
fn print_qcow2(q: &Qcow2Check, output: Output, quiet: bool, filename: &str) {
    for m in q.repair_messages.iter().chain(&q.report.messages) {
        eprintln!("{m}");
    }
    match output {
        Output::Json => outln!("{}", pretty(&q.report.json(filename))),
        Output::Human if !quiet => out!("{}{}", q.preamble, q.report.human()),
        Output::Human => {}
    }
    if q.report.exit_code() == 1 {
        eprintln!("vmcrypt: Check failed");
    }
}
