//! `vmcrypt secret list [--json]` (virsh secret-list): UUID and usage, as virsh's table,
//! or a JSON array.
use super::StoreOpts;
use serde_json::json;
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array instead of the table
    #[arg(long = "json")]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreOpts,
}

pub fn run(a: &Args) -> Result<()> {
    let rows = a.store.store().list()?;
    if a.json {
        let arr: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "uuid": r.def.uuid.to_string(),
                    "usage": r.def.usage.as_ref().map(|u| json!({"type": u.kind(), "id": u.id()})),
                    "description": r.def.description,
                    "ephemeral": r.def.ephemeral,
                    "private": r.def.private,
                    "has_value": r.has_value,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
        return Ok(());
    }
    let usages: Vec<String> = rows
        .iter()
        .map(|r| {
            r.def
                .usage
                .as_ref()
                .map(|u| u.display())
                .unwrap_or_default()
        })
        .collect();
    let width = usages.iter().map(String::len).max().unwrap_or(0).max(5);
    outln!(" {:<36}   Usage", "UUID");
    outln!("{}", "-".repeat(1 + 36 + 3 + width + 1));
    for (r, u) in rows.iter().zip(&usages) {
        outln!(" {}   {u}", r.def.uuid);
    }
    outln!("");
    Ok(())
}
