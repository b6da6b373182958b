//! `bulwark-node-image update`, `bless` and `status`: the A/B slots.

use std::path::PathBuf;

use bulwark_node_image::install::{bless, boot_state, update, BootState, SlotState};
use bulwark_node_image::NodeImageError;
use clap::Args;
use serde_json::json;

use super::install::{outln, verify, ImageArgs};

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub image: ImageArgs,
    /// The node's disk, or its EFI system partition alone.
    #[arg(long)]
    pub disk: PathBuf,
    /// Boots the new slot is tried before it counts as bad.
    #[arg(long, default_value_t = 1)]
    pub tries: u32,
}

#[derive(Args)]
pub struct BlessArgs {
    /// The node's disk, or its EFI system partition alone.
    #[arg(long)]
    pub disk: PathBuf,
    /// The version that booted and is healthy.
    #[arg(long)]
    pub version: u64,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The node's disk, or its EFI system partition alone.
    #[arg(long)]
    pub disk: PathBuf,
}

pub fn run(a: &UpdateArgs, json: bool) -> Result<(), NodeImageError> {
    let payload = verify(&a.image, json)?;
    let r = update(&payload, &a.disk, a.tries)?;
    if json {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["ok"] = json!(true);
        outln!("{v}");
    } else {
        outln!(
            "wrote /EFI/Linux/{} on {}: tried at the next boot, {} is the fallback",
            r.entry,
            a.disk.display(),
            r.fallback
        );
        for f in &r.removed {
            outln!("  removed /EFI/Linux/{f}");
        }
        outln!("  uki sha384 {}", r.uki_sha384);
    }
    Ok(())
}

pub fn run_bless(a: &BlessArgs, json: bool) -> Result<(), NodeImageError> {
    let r = bless(&a.disk, a.version)?;
    if json {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["ok"] = json!(true);
        outln!("{v}");
    } else if r.already {
        outln!(
            "{} was already good; anti-rollback floor {}",
            r.entry,
            r.floor
        );
    } else {
        outln!("marked {} good; anti-rollback floor {}", r.entry, r.floor);
    }
    Ok(())
}

pub fn run_status(a: &StatusArgs, json: bool) -> Result<(), NodeImageError> {
    let s = boot_state(&a.disk)?;
    if json {
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        v["ok"] = json!(true);
        outln!("{v}");
    } else {
        print_state(&s);
    }
    Ok(())
}

fn print_state(s: &BootState) {
    outln!("image {}, anti-rollback floor {}", s.name, s.floor);
    for slot in &s.slots {
        let state = match slot.state {
            SlotState::Blessed => "good".to_string(),
            SlotState::Trying { left, done } => format!("on trial: {left} tries left, {done} done"),
            SlotState::Bad { done } => format!("bad: no tries left, {done} done"),
        };
        outln!("  version {:>6}  {:<32} {state}", slot.version, slot.file);
    }
    if let Some(n) = &s.next_boot {
        outln!("next boot: {}", n.file);
    }
    if let Some(f) = &s.fallback {
        outln!("fallback:  {}", f.file);
    }
}
