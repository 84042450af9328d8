//! The HTTP endpoint: `/admin/…` exists only with a token, and only answers to it.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_with(addr: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

fn start(token: Option<&str>) -> (KillOnDrop, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = millstream();
    command
        .args([
            "run",
            "--source",
            "simulate:assets=1,steps=600,realtime=20",
            "--sink",
            "null",
            "--http",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(token) = token {
        command.env("MILLSTREAM_ADMIN__TOKEN", token);
    }
    let child = KillOnDrop(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && http_get(&addr, "/health/live").is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, addr)
}

#[test]
fn no_token_no_admin_endpoint() {
    let (_run, addr) = start(None);
    assert_eq!(get_with(&addr, "/health/live", None).map(|r| r.0), Some(200));
    assert_eq!(get_with(&addr, "/admin/config", None).map(|r| r.0), Some(404));
    assert_eq!(get_with(&addr, "/admin/config", Some("anything")).map(|r| r.0), Some(404));
}

#[test]
fn admin_answers_only_to_its_token_and_shows_no_secret() {
    const TOKEN: &str = "admin-token-7d2e";
    let (_run, addr) = start(Some(TOKEN));
    assert_eq!(get_with(&addr, "/admin/config", None).map(|r| r.0), Some(401));
    assert_eq!(get_with(&addr, "/admin/config", Some("admin-token-7d2f")).map(|r| r.0), Some(401));
    let (status, body) = get_with(&addr, "/admin/config", Some(TOKEN)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("[pipeline]") && body.contains("token = \"***\""), "{body}");
    assert!(!body.contains(TOKEN));
    let (_, metrics) = get_with(&addr, "/metrics", None).unwrap();
    assert!(!metrics.contains(TOKEN) && metrics.contains("millstream_readings_total"));
}
