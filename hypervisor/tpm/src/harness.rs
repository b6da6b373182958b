//! Test harness: a private software TPM (swtpm 0.7, TPM 2.0) manufactured
//! with an EK certificate from a CA created for this harness alone, served on
//! loopback TCP ports, its state in a temporary directory, killed on drop.
//!
//! swtpm serves one client at a time and has no resource manager: use one
//! [`Swtpm`] per test, one [`crate::Tpm`] (or one tpm2-tools command) on it
//! at a time, and flush what you load.
//!
//! Layout of [`Swtpm::dir`]: `swtpm_setup.conf`, `swtpm-localca.conf`,
//! `ca/` (the per-harness CA: `swtpm-localca-rootca-cert.pem`,
//! `issuercert.pem`), `certs/` (`ek-rsa2048.crt`, `ek-secp384r1.crt`, DER),
//! `state/` (the TPM state). swtpm listens on loopback TCP ports chosen at
//! start ([`Swtpm::tcti`]).

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the harness could not start a TPM.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A tool is not installed.
    #[error("{tool} not found: run scripts/setup (installs swtpm, swtpm-tools and tpm2-tools)")]
    Missing { tool: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}): {output}")]
    Failed {
        tool: &'static str,
        status: String,
        output: String,
    },
    #[error("{0}")]
    NotReady(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// Run a tool to completion; a missing binary is [`HarnessError::Missing`].
fn run(tool: &'static str, cmd: &mut Command) -> Result<(), HarnessError> {
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => HarnessError::Missing { tool },
        _ => HarnessError::Io {
            what: format!("running {tool}"),
            source: e,
        },
    })?;
    if !out.status.success() {
        return Err(HarnessError::Failed {
            tool,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// A running swtpm with a freshly manufactured state and its own CA.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl Swtpm {
    /// Manufacture a TPM (RSA-2048 and ECC P-384 EKs with certificates from
    /// a new local CA, a platform certificate, SHA-256 PCR bank) and start
    /// swtpm on it with startup-clear (about 3 s, mostly swtpm_setup).
    pub fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-swtpm-")
            .tempdir()
            .map_err(io_err("creating the swtpm directory"))?;
        let d = dir.path();
        for sub in ["ca", "certs", "state"] {
            fs::create_dir(d.join(sub)).map_err(io_err(format!("creating {sub}/")))?;
        }
        let localca_conf = d.join("swtpm-localca.conf");
        let ca = d.join("ca");
        fs::write(
            &localca_conf,
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .map_err(io_err("writing swtpm-localca.conf"))?;
        let setup_conf = d.join("swtpm_setup.conf");
        fs::write(
            &setup_conf,
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                localca_conf.display()
            ),
        )
        .map_err(io_err("writing swtpm_setup.conf"))?;
        run(
            "swtpm_setup",
            Command::new("swtpm_setup")
                .arg("--tpm2")
                .arg("--config")
                .arg(&setup_conf)
                .arg("--tpmstate")
                .arg(d.join("state"))
                .args(["--create-ek-cert", "--create-platform-cert"])
                .arg("--write-ek-cert-files")
                .arg(d.join("certs")),
        )?;
        let mut tpm = Swtpm {
            dir,
            child: None,
            port: 0,
        };
        tpm.spawn()?;
        Ok(tpm)
    }

    /// Start swtpm on a free pair of loopback TCP ports (the server port and,
    /// the swtpm TCTI's convention, the control port right above it),
    /// retrying with other ports if another process took them meanwhile.
    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut last = None;
        for _ in 0..20 {
            let port = free_port_pair()?;
            match self.spawn_on(port)? {
                true => {
                    self.port = port;
                    return Ok(());
                }
                false => last = Some(port),
            }
        }
        Err(HarnessError::NotReady(format!(
            "swtpm did not start (last ports tried {:?})",
            last
        )))
    }

    /// Ok(false): swtpm exited (ports taken); Ok(true): both ports accept.
    fn spawn_on(&mut self, port: u16) -> Result<bool, HarnessError> {
        let d = self.dir.path();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", d.join("state").display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HarnessError::Missing { tool: "swtpm" },
                _ => HarnessError::Io {
                    what: "starting swtpm".into(),
                    source: e,
                },
            })?;
        self.child = Some(child);
        let start = Instant::now();
        // The probe connection to the server port is closed at once,
        // freeing swtpm (one client at a time) for the real client.
        let ready = |p: u16| TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_ok();
        loop {
            if self.exited() {
                self.stop();
                return Ok(false);
            }
            if ready(port + 1) && ready(port) {
                // Make sure it was our swtpm that answered.
                std::thread::sleep(Duration::from_millis(20));
                if self.exited() {
                    self.stop();
                    return Ok(false);
                }
                return Ok(true);
            }
            if start.elapsed() > Duration::from_secs(10) {
                self.stop();
                return Err(HarnessError::NotReady(format!(
                    "swtpm on port {port} did not accept connections within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// TCTI string for tss-esapi and tpm2-tools (`-T`, `TPM2TOOLS_TCTI`).
    ///
    /// TCP, because tss-esapi 7's `TctiNameConf` parses only
    /// `swtpm:host=..,port=..` (a `path=` Unix socket is not supported).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The server port (the control port is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The per-harness root CA certificate (PEM, self-signed).
    pub fn ca_root_pem(&self) -> PathBuf {
        self.dir
            .path()
            .join("ca")
            .join("swtpm-localca-rootca-cert.pem")
    }

    /// The per-harness intermediate CA that signs the EK certificates (PEM).
    pub fn ca_issuer_pem(&self) -> PathBuf {
        self.dir.path().join("ca").join("issuercert.pem")
    }

    /// The RSA-2048 EK certificate (DER) as written by swtpm_setup.
    pub fn ek_rsa_cert_der(&self) -> PathBuf {
        self.dir.path().join("certs").join("ek-rsa2048.crt")
    }

    /// Kill swtpm (idempotent).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port P with P and P+1 free on 127.0.0.1 (at the time of asking).
fn free_port_pair() -> Result<u16, HarnessError> {
    for _ in 0..100 {
        let l =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("finding a free port"))?;
        let port = l
            .local_addr()
            .map_err(io_err("finding a free port"))?
            .port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(HarnessError::NotReady("no free pair of TCP ports".into()))
}
