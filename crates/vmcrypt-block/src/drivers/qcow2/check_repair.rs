//! Repair for the qcow2 checker: rewrite refcount entries in the existing refcount
//! blocks (each touched block written once) and fix OFLAG_COPIED flags of the active
//! tables, the way `qemu-img check -r` does; refuse what needs a rebuild.
use super::*;

/// Repair refcounts of the qcow2 image in `file` (opened writable), then check it again.
pub fn repair(file: &dyn BlockDriver, mode: Repair, limits: &CheckLimits) -> Result<Repaired> {
    let img = Image::open(file)?;
    ensure!(
        !img.h.is_corrupt(),
        Unsupported,
        "qcow2: the image is marked corrupt; vmcrypt does not repair such images (qemu-img check -r all can)"
    );
    let pass = run(&img, limits)?;
    let fixes = plan_fixes(&img, &pass, mode)?;
    // Like qemu-img, a repairing run reports OFLAG_COPIED only as it repairs it.
    let mut messages = pass.report.messages.clone();
    messages.drain(pass.oflag_messages.clone());
    let (mut leaks_fixed, mut corruptions_fixed) = (0, 0);
    for m in &fixes {
        messages.push(format!(
            "Repairing cluster {} refcount={} reference={}",
            m.cluster, m.stored, m.counted
        ));
        if m.stored > m.counted {
            leaks_fixed += 1;
        } else {
            corruptions_fixed += 1;
        }
    }
    write_fixes(&img, &fixes)?;
    let copied = fix_oflag_copied(&Image::open(file)?)?;
    corruptions_fixed += copied.len() as u64;
    messages.extend(copied);
    let mut report = run(&Image::open(file)?, limits)?.report;
    if report.exit_code() == 0 && img.h.is_dirty() {
        clear_dirty(file, img.h.incompatible_features)?;
    }
    report.leaks_fixed = leaks_fixed;
    report.corruptions_fixed = corruptions_fixed;
    Ok(Repaired {
        leaks_fixed,
        corruptions_fixed,
        messages,
        report,
    })
}

/// Clear the dirty bit (lazy refcounts) once the refcounts are known to be right, as
/// QEMU does after its automatic repair.
fn clear_dirty(file: &dyn BlockDriver, incompatible: u64) -> Result<()> {
    let bits = incompatible & !vmcrypt_format::qcow2::header::INCOMPAT_DIRTY;
    file.write_at(&bits.to_be_bytes(), 72)
        .ctx("qcow2: clearing the dirty bit")?;
    file.flush()
}

/// Choose the refcount entries to rewrite, or refuse what cannot be fixed in place.
fn plan_fixes(img: &Image, pass: &Pass, mode: Repair) -> Result<Vec<Mismatch>> {
    ensure!(
        !pass.refblocks_broken,
        Unsupported,
        "qcow2: ERROR need to rebuild refcount structures (refcount table or blocks are damaged); vmcrypt cannot rebuild them, qemu-img check -r all can"
    );
    let low: Vec<&Mismatch> = pass
        .mismatches
        .iter()
        .filter(|m| m.stored < m.counted)
        .collect();
    if mode == Repair::Leaks {
        ensure!(
            !low.iter().any(|m| m.stored == 0),
            Unsupported,
            "qcow2: ERROR need to rebuild refcount structures (a cluster in use has refcount 0); use -r all"
        );
    } else {
        // OFLAG_COPIED errors are judged again after the refcounts are fixed.
        let other = pass.report.corruptions - low.len() as u64 - pass.oflag_messages.len() as u64;
        ensure!(
            other == 0,
            Unsupported,
            "qcow2: {other} corruptions are not refcount errors; vmcrypt -r all only fixes refcounts"
        );
        for m in &low {
            ensure!(
                img.refblock_of(m.cluster).is_some(),
                Unsupported,
                "qcow2: cluster {} has no refcount block; vmcrypt cannot allocate one",
                m.cluster
            );
        }
    }
    Ok(pass
        .mismatches
        .iter()
        .filter(|m| m.stored > m.counted || mode == Repair::All)
        .copied()
        .collect())
}

/// Rewrite each touched refcount block once, then flush.
fn write_fixes(img: &Image, fixes: &[Mismatch]) -> Result<()> {
    let mut blocks: BTreeMap<u64, Vec<&Mismatch>> = BTreeMap::new();
    for m in fixes {
        let off = img.refblock_of(m.cluster).expect("checked by plan_fixes");
        blocks.entry(off).or_default().push(m);
    }
    for (off, ms) in blocks {
        let mut block = vec![0u8; img.cs as usize];
        read_padded(img.file, &mut block, off)?;
        for m in ms {
            let idx = m.cluster & (img.refs_per_block() - 1);
            rc::set(&mut block, img.h.refcount_order, idx as usize, m.counted);
        }
        img.file
            .write_at(&block, off)
            .with_ctx(|| format!("qcow2: writing the refcount block at {off:#x}"))?;
    }
    img.file.flush()
}

/// Set COPIED exactly where the stored refcount is 1, on active L1 entries and the data
/// entries of the L2 tables they name; returns qemu-img's "Repairing" lines.
fn fix_oflag_copied(img: &Image) -> Result<Vec<String>> {
    let h = &img.h;
    let mut stored = StoredRefcounts { img, cached: None };
    let mut out = Vec::new();
    let l1 = read_u64s(img.file, h.l1_table_offset, u64::from(h.l1_size) * 8)?;
    for (i, e) in l1.into_iter().map(L1Entry::from_raw).enumerate() {
        let l2 = e.l2_offset();
        let sane = l2.is_multiple_of(img.cs) && l2 + img.cs <= img.file_len;
        if l2 == 0 || !sane {
            continue;
        }
        let Ok(rc) = stored.get(l2 >> h.cluster_bits) else {
            continue;
        };
        if (rc == 1) != e.copied() {
            out.push(format!(
                "Repairing OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={:x} refcount={rc}",
                e.raw()
            ));
            let at = h.l1_table_offset + 8 * i as u64;
            let fixed = e.with_copied(rc == 1);
            img.file.write_at(&fixed.raw().to_be_bytes(), at)?;
        }
        fix_l2_copied(img, &mut stored, l2, &mut out)?;
    }
    img.file.flush()?;
    Ok(out)
}

fn fix_l2_copied(
    img: &Image,
    stored: &mut StoredRefcounts,
    l2: u64,
    out: &mut Vec<String>,
) -> Result<()> {
    let mut raw = vec![0u8; img.cs as usize];
    img.file.read_at(&mut raw, l2)?;
    let step = if img.h.has_extended_l2() { 16 } else { 8 };
    let mut changed = false;
    for chunk in raw.chunks_exact_mut(step) {
        let x = RawL2Entry::from_raw(u64::from_be_bytes(chunk[..8].try_into().expect("8 bytes")));
        let off = x.host_offset();
        if x.is_compressed() || off == 0 {
            continue;
        }
        let Ok(rc) = stored.get(off >> img.h.cluster_bits) else {
            continue;
        };
        if (rc == 1) != x.copied() {
            out.push(format!(
                "Repairing OFLAG_COPIED data cluster: l2_entry={:x} refcount={rc}",
                x.raw()
            ));
            chunk[..8].copy_from_slice(&x.with_copied(rc == 1).raw().to_be_bytes());
            changed = true;
        }
    }
    if changed {
        img.file
            .write_at(&raw, l2)
            .with_ctx(|| format!("qcow2: writing the L2 table at {l2:#x}"))?;
    }
    Ok(())
}
