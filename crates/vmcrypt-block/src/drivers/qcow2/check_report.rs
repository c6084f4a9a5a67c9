//! qemu-img check's output for the qcow2 checker: the human summary, the JSON object
//! (with qemu-img's key order) and the exit status.
use super::{CheckReport, Repaired};
use serde_json::{Map, Value, json};

impl CheckReport {
    /// qemu-img check's exit status: 0 clean, 1 check errors, 2 corruptions, 3 leaks.
    pub fn exit_code(&self) -> u8 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    /// The human summary qemu-img prints on stdout (messages are separate).
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0 {
            s += "No errors were found on the image.\n";
        }
        if self.corruptions > 0 {
            s += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                self.corruptions
            );
        }
        if self.leaks > 0 {
            s += &format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                self.leaks
            );
        }
        if self.check_errors > 0 {
            s += &format!(
                "\n{} internal errors have occurred during the check.\n",
                self.check_errors
            );
        }
        if self.total_clusters != 0 && self.allocated_clusters != 0 {
            let a = self.allocated_clusters as f64;
            s += &format!(
                "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
                self.allocated_clusters,
                self.total_clusters,
                a * 100.0 / self.total_clusters as f64,
                self.fragmented_clusters as f64 * 100.0 / a,
                self.compressed_clusters as f64 * 100.0 / a
            );
        }
        if self.image_end_offset != 0 {
            s += &format!("Image end offset: {}\n", self.image_end_offset);
        }
        s
    }

    /// qemu-img check --output=json's object (zero optional counters left out, in
    /// qemu-img's key order).
    pub fn json(&self, filename: &str) -> Value {
        let mut m = Map::new();
        let opt = |m: &mut Map<String, Value>, k: &str, v: u64| {
            if v != 0 {
                m.insert(k.into(), json!(v));
            }
        };
        opt(&mut m, "image-end-offset", self.image_end_offset);
        opt(&mut m, "compressed-clusters", self.compressed_clusters);
        opt(&mut m, "total-clusters", self.total_clusters);
        opt(&mut m, "corruptions", self.corruptions);
        opt(&mut m, "corruptions-fixed", self.corruptions_fixed);
        m.insert("check-errors".into(), json!(self.check_errors));
        opt(&mut m, "leaks", self.leaks);
        opt(&mut m, "leaks-fixed", self.leaks_fixed);
        opt(&mut m, "allocated-clusters", self.allocated_clusters);
        m.insert("filename".into(), json!(filename));
        m.insert("format".into(), json!("qcow2"));
        opt(&mut m, "fragmented-clusters", self.fragmented_clusters);
        Value::Object(m)
    }
}

impl Repaired {
    /// qemu-img's "The following inconsistencies were found and repaired" preamble.
    pub fn human_preamble(&self) -> String {
        if self.leaks_fixed == 0 && self.corruptions_fixed == 0 {
            return String::new();
        }
        format!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
            self.leaks_fixed, self.corruptions_fixed
        )
    }
}
