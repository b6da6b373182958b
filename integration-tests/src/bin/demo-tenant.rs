//! The tenant's side of the confidential-inference demo
//! (`docs/confidential-inference.md`), run on the tenant's own machine.
//!
//! ```text
//! demo-tenant train --out DIR
//! demo-tenant check-answer ANSWER_FILE|-
//! ```
//!
//! - `train` trains the demo's logistic regression on deterministic synthetic data,
//!   prints its accuracy, makes a fresh 32-byte key and writes `DIR/weights.enc` (the
//!   sealed weights, for the image's rootfs), `DIR/weights.key` (the key in hex, mode
//!   0600), `DIR/request.json` (a request carrying the key and the sample inputs,
//!   mode 0600, for `bulwark-verify connect --send`) and `DIR/weights.plain` (the
//!   plaintext weights, mode 0600, for the tenant's records and the lab's check that
//!   the node never holds them).
//! - `check-answer` checks the service's answer (the JSON line itself, or what
//!   `bulwark-verify connect --send` printed, text or `--json`; `-` reads stdin): well
//!   formed, one prediction per sample input, and the class each sample is known to
//!   have.
//!
//! Exit status: 0 done / answer good, 1 answer refused, 2 usage or I/O errors.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use bulwark_integration_tests::inference::{
    check_answer, extract_answer, plaintext, sample_inputs, sample_request, seal, train,
    WeightsKey, TRAINING_POINTS,
};

const USAGE: &str =
    "usage: demo-tenant train --out DIR\n       demo-tenant check-answer ANSWER_FILE|-";

/// The most `check-answer` reads (`bulwark-verify` caps a reply at less).
const MAX_ANSWER_FILE: u64 = 16 << 20;

/// Writes `bytes` to a new file with `mode` (an old file is removed first, so the mode
/// is the new file's).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn cmd_train(out: &Path) -> Result<(), String> {
    let started = std::time::Instant::now();
    let trained = train();
    let took = started.elapsed();
    println!(
        "trained {} on {TRAINING_POINTS} synthetic points in {} ms: training accuracy {:.2} %, held-out accuracy {:.2} %",
        trained.model.name(),
        took.as_millis(),
        trained.training_accuracy * 100.0,
        trained.held_out_accuracy * 100.0,
    );
    let key = WeightsKey::generate().map_err(|e| format!("random key: {e}"))?;
    let sealed = seal(&trained.model, &key).map_err(|e| format!("random nonce: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let weights = out.join("weights.enc");
    let key_path = out.join("weights.key");
    let request = out.join("request.json");
    write_file(&weights, &sealed, 0o644)?;
    let mut key_line = key.to_hex();
    key_line.push('\n');
    write_file(&key_path, key_line.as_bytes(), 0o600)?;
    write_file(&request, sample_request(&key).as_bytes(), 0o600)?;
    // The plaintext weights, for the tenant's records and for the lab's check that the
    // node's disk never holds them.
    let plain_path = out.join("weights.plain");
    write_file(&plain_path, &plaintext(&trained.model), 0o600)?;
    println!(
        "wrote {} ({} bytes, sealed: put it in the image's rootfs)",
        weights.display(),
        sealed.len()
    );
    println!("wrote {} (the key, mode 0600: keep it)", key_path.display());
    println!(
        "wrote {} ({} sample inputs and the key, mode 0600: send it over attested TLS only)",
        request.display(),
        sample_inputs().len()
    );
    println!(
        "wrote {} (the plaintext weights, mode 0600: never leaves this machine)",
        plain_path.display()
    );
    Ok(())
}

fn cmd_check(path: &str) -> Result<Result<String, String>, String> {
    let mut bytes = Vec::new();
    let read = if path == "-" {
        std::io::stdin()
            .take(MAX_ANSWER_FILE + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_ANSWER_FILE + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() as u64 > MAX_ANSWER_FILE {
        return Err(format!("{path}: larger than {MAX_ANSWER_FILE} bytes"));
    }
    let text = String::from_utf8_lossy(&bytes);
    let answer = extract_answer(&text);
    let samples = sample_inputs();
    Ok(check_answer(&answer, &samples).map(|preds| {
        let classes: Vec<String> = preds
            .iter()
            .map(|p| format!("{}(p={:.4})", p.class, p.p))
            .collect();
        format!(
            "answer ok: {} predictions, every sample in its known class: {}",
            preds.len(),
            classes.join(" ")
        )
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["train", "--out", dir] => match cmd_train(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo-tenant: {e}");
                ExitCode::from(2)
            }
        },
        ["check-answer", path] => match cmd_check(path) {
            Ok(Ok(line)) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Ok(Err(why)) => {
                eprintln!("demo-tenant: answer refused: {why}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("demo-tenant: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
