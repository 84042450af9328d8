//! Throwaway TLS certificates for the tests of TLS connections (PostgreSQL, Kafka), made with
//! the `openssl` program.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A throwaway CA and a server certificate it signs for `localhost` and `127.0.0.1`, in
/// `dir/tls/`: (CA certificate, server certificate, server key), PEM.
pub fn make_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let path = |name: &str| tls.join(name).into_os_string();
    let (ca_key, ca, csr, ext, certificate, key) = (
        path("ca.key"),
        path("ca.crt"),
        path("server.csr"),
        path("server.ext"),
        path("server.crt"),
        path("server.key"),
    );
    std::fs::write(&ext, "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
    let openssl = |args: &[&OsStr]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run openssl to make test certificates")?;
        if !out.status.success() {
            bail!("openssl {:?} failed: {}", args.first(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    let os = OsStr::new;
    // A test CA, and a server certificate it signs (a CA as the end entity is refused).
    openssl(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("2"),
        os("-subj"),
        os("/CN=millstream test Kafka CA"),
        os("-keyout"),
        &ca_key,
        os("-out"),
        &ca,
    ])?;
    openssl(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=localhost"),
        os("-keyout"),
        &key,
        os("-out"),
        &csr,
    ])?;
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        &csr,
        os("-CA"),
        &ca,
        os("-CAkey"),
        &ca_key,
        os("-CAcreateserial"),
        os("-days"),
        os("2"),
        os("-extfile"),
        &ext,
        os("-out"),
        &certificate,
    ])?;
    Ok((ca.into(), certificate.into(), key.into()))
}
