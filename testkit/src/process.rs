//! What the service harnesses share: finding an installed program, a free loopback port, and
//! the end of a log for an error message.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

/// The program `name`: the path in the environment variable `env_var`, else
/// `$CARGO_HOME/bin/NAME`, `~/.cargo/bin/NAME`, or on `PATH`. `what` and `install` make the
/// error say what is missing and how to install it.
pub(crate) fn find_program(name: &str, env_var: &str, what: &str, install: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{env_var}={} is not a file (it should name the {name} program)", path.display());
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(home).join("bin").join(name));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(home).join(".cargo").join("bin").join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(name)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "{what} `{name}` was not found ({env_var}, $CARGO_HOME/bin, ~/.cargo/bin, PATH). \
             Install it with {install}, or set {env_var} to its path"
        )
    })
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of `log`.
pub(crate) fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(log_tail("a\nb\nc", 2), "b\nc");
        assert_eq!(log_tail("a", 5), "a");
    }
}
