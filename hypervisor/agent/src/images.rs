//! Signed images uploaded through the API: `<state-dir>/images/<name>.bwi`, written to
//! a temporary file, synced, checked to be a Bulwark image, then linked into place
//! without ever replacing an existing one. Verification against a tenant's keys
//! happens when a VM is created from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::lifecycle::check_id;

/// What `GET /images` lists (from the unverified manifest).
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub name: String,
    pub bytes: u64,
    pub path: String,
    /// The manifest's image name and version (not verified here).
    pub manifest_name: Option<String>,
    pub manifest_version: Option<u64>,
    /// Why the manifest could not be read, if so.
    pub error: Option<String>,
}

const TMP_PREFIX: &str = ".upload-";

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// The file of image `name` (checked: 1-64 of `a-z0-9_-`).
pub fn path(state_dir: &Path, name: &str) -> Result<PathBuf> {
    check_id("name", name)?;
    Ok(dir(state_dir).join(format!("{name}.bwi")))
}

fn storage(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::new(
        Kind::Internal,
        "storage",
        format!("{what} {}: {e}", p.display()),
    )
}

fn info(name: &str, p: &Path) -> ImageInfo {
    let bytes = std::fs::metadata(p).map_or(0, |m| m.len());
    let (manifest_name, manifest_version, error) = match bulwark_image::Bundle::open(p) {
        Ok(b) => {
            let m = b.unverified_manifest();
            (Some(m.name.clone()), Some(m.version), None)
        }
        Err(e) => (None, None, Some(e.to_string())),
    };
    ImageInfo {
        name: name.to_string(),
        bytes,
        path: p.display().to_string(),
        manifest_name,
        manifest_version,
        error,
    }
}

/// Every uploaded image, by name.
pub fn list(state_dir: &Path) -> Result<Vec<ImageInfo>> {
    let d = dir(state_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(storage("reading", &d, e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".bwi") {
            if check_id("name", name).is_ok() {
                out.push(info(name, &e.path()));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes temporary files of uploads a crash interrupted.
pub fn clean_interrupted(state_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir(state_dir)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                tracing::warn!(file = %e.path().display(), "removing an interrupted image upload");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Stores the upload `body` as image `name` (at most `max` bytes).
pub async fn upload(
    state_dir: &Path,
    name: &str,
    body: axum::body::Body,
    max: u64,
) -> Result<ImageInfo> {
    // A refusal before the body is read would leave the client writing into a closed
    // connection: read (and drop) what it sends first, up to the limit. An existing
    // name is refused after the upload, when linking it into place.
    let target = match path(state_dir, name) {
        Ok(t) => t,
        Err(e) => {
            discard(body, max).await;
            return Err(e);
        }
    };
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).map_err(|e| storage("creating", &d, e))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = d.join(format!("{TMP_PREFIX}{name}-{}-{n}", std::process::id()));
    let result = receive(&tmp, body, max).await;
    let result = match result {
        Ok(()) => {
            let (t, target2) = (tmp.clone(), target.clone());
            tokio::task::spawn_blocking(move || finish(&t, &target2))
                .await
                .map_err(|e| Error::internal("storage", e.to_string()))
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&tmp);
    result?;
    Ok(info(name, &target))
}

pub(crate) async fn discard(body: axum::body::Body, max: u64) {
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        total += chunk.len() as u64;
        if total > max {
            return;
        }
    }
}

/// Writes the upload `body` (at most `max` bytes, not empty) to the new file `tmp`, synced.
pub(crate) async fn receive(tmp: &Path, body: axum::body::Body, max: u64) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| storage("creating", tmp, e))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::bad("body", format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(Error::bad(
                "body",
                format!("the image is larger than max_image_bytes ({max})"),
            ));
        }
        f.write_all(&chunk)
            .map_err(|e| storage("writing", tmp, e))?;
    }
    if total == 0 {
        return Err(Error::bad("body", "an empty upload"));
    }
    f.sync_all().map_err(|e| storage("syncing", tmp, e))
}

/// Checks the upload is a Bulwark image, then links it into place (never replacing
/// one) and syncs the directory.
fn finish(tmp: &Path, target: &Path) -> Result<()> {
    bulwark_image::Bundle::open(tmp).map_err(|e| {
        Error::new(
            Kind::Unprocessable,
            "body",
            format!("not a Bulwark image: {e}"),
        )
    })?;
    std::fs::hard_link(tmp, target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::conflict(
                "name",
                format!("{} exists; delete it first", target.display()),
            )
        } else {
            storage("linking", target, e)
        }
    })?;
    if let Some(d) = target.parent() {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| storage("syncing", d, e))?;
    }
    Ok(())
}
