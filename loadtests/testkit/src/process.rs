//! Child processes under test: their log as it comes, the addresses they
//! say they listen on (a server started with port 0 binds a free port
//! itself, so no test has to guess one), SIGTERM, and a bounded wait for
//! the exit.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

/// Whether `program` runs (`program ARGS` exits 0, e.g. `ffmpeg
/// -version`). Where it does not, the test is skipped after a notice, but
/// under CI (`CI=true`) it fails: CI installs every tool (`install_hint`
/// says how).
pub fn have_tool(program: &str, args: &[&str], install_hint: &str) -> bool {
    let found = std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is required when CI=true ({install_hint})"
        );
        eprintln!("notice: {program} not found, skipping this test ({install_hint})");
    }
    found
}

/// The flags of a headless Chromium under test: no sandbox, GPU, QUIC,
/// first-run page, background traffic, updates or sync.
pub const HEADLESS_CHROMIUM: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Asserts that `output` is of a run of `what` that succeeded (else shows
/// its status and both streams); its standard output.
pub fn assert_success(what: &str, output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends SIGTERM to `pid`, through the shell's builtin `kill` (no signal
/// crate, no procps needed).
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .status()
        .expect("running sh -c kill");
    assert!(status.success(), "kill -TERM {pid}: {status}");
}

/// SIGTERM, then the exit status; panics unless `child` exits within
/// `grace`.
pub async fn terminate(child: &mut tokio::process::Child, grace: Duration) -> ExitStatus {
    sigterm(child.id().expect("the child is still running"));
    tokio::time::timeout(grace, child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within {grace:?} of SIGTERM"))
        .expect("waiting for the child")
}

/// [`terminate`] without a runtime: SIGTERM, then the exit status, or
/// `None` when `child` is still running after `grace` (the caller kills it
/// and reports what it logged).
pub fn terminate_blocking(child: &mut std::process::Child, grace: Duration) -> Option<ExitStatus> {
    sigterm(child.id());
    let deadline = std::time::Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines a child writes on one stream, gathered as they come (and
/// echoed to the test's stderr if asked), so that a test can wait for one.
#[derive(Debug)]
pub struct LogLines {
    /// (everything so far, whether the stream has ended)
    seen: watch::Receiver<(String, bool)>,
}

impl LogLines {
    /// Reads `stream` (a child's piped stdout or stderr) on a task of its
    /// own until it ends.
    pub fn spawn(stream: impl AsyncRead + Unpin + Send + 'static, echo: bool) -> Self {
        let (tx, seen) = watch::channel((String::new(), false));
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut bytes = Vec::new();
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop
            // the reading (the child would block on a full pipe).
            while reader
                .read_until(b'\n', &mut bytes)
                .await
                .is_ok_and(|n| n > 0)
            {
                let line = String::from_utf8_lossy(&bytes)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                bytes.clear();
                if echo {
                    eprintln!("{line}");
                }
                tx.send_modify(|(text, _)| {
                    text.push_str(&line);
                    text.push('\n');
                });
            }
            tx.send_modify(|(_, ended)| *ended = true);
        });
        Self { seen }
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.seen.borrow().0.clone()
    }

    /// The first line containing `needle`, once it is written; panics
    /// (with the log) when the stream ends or `timeout` passes first.
    pub async fn line_with(&self, needle: &str, timeout: Duration) -> String {
        let mut seen = self.seen.clone();
        let waited = tokio::time::timeout(
            timeout,
            seen.wait_for(|(text, ended)| *ended || text.contains(needle)),
        )
        .await;
        let text = self.text();
        let found = text.lines().find(|l| l.contains(needle));
        match (waited, found) {
            (_, Some(line)) => line.to_owned(),
            (Ok(_), None) => panic!("the log ended without {needle:?}:\n{text}"),
            (Err(_), None) => panic!("no {needle:?} in the log within {timeout:?}:\n{text}"),
        }
    }

    /// Everything, once the stream has ended (the child exited or closed
    /// it); panics when that takes longer than `timeout`.
    pub async fn ended(&self, timeout: Duration) -> String {
        let mut seen = self.seen.clone();
        tokio::time::timeout(timeout, seen.wait_for(|(_, ended)| *ended))
            .await
            .unwrap_or_else(|_| panic!("the log did not end within {timeout:?}"))
            .expect("the reader task ended");
        self.text()
    }
}

/// The address a `key=ADDRESS` field of a log line names (tracing's text
/// format; `key=Some(ADDRESS)` too), if any.
pub fn logged_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let prefix = format!("{key}=");
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&prefix))?;
    let value = value
        .strip_prefix("Some(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(value);
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn a_tool_that_runs_is_there_and_one_that_does_not_is_not() {
        assert!(have_tool("sh", &["-c", "exit 0"], "a shell"));
        if std::env::var("CI").as_deref() != Ok("true") {
            assert!(!have_tool("sh", &["-c", "exit 3"], "a shell"));
        }
    }

    #[test]
    fn reads_logged_addresses() {
        let line = "2026-01-01T00:00:00Z  INFO x: listening grpc=127.0.0.1:5 \
                    clearkey=Some(127.0.0.1:7) off=None";
        assert_eq!(
            logged_addr(line, "grpc"),
            Some("127.0.0.1:5".parse().unwrap())
        );
        assert_eq!(
            logged_addr(line, "clearkey"),
            Some("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(logged_addr(line, "off"), None);
        assert_eq!(logged_addr(line, "rpc"), None, "a whole key only");
    }

    #[tokio::test]
    async fn waits_for_a_line_then_terminates() {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("echo starting; sleep 0.1; echo ready at=127.0.0.1:9; exec sleep 30")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = LogLines::spawn(child.stdout.take().unwrap(), false);
        let line = log.line_with("ready", Duration::from_secs(10)).await;
        assert_eq!(
            logged_addr(&line, "at"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        let status = terminate(&mut child, Duration::from_secs(10)).await;
        assert!(!status.success(), "killed by SIGTERM: {status:?}");
        assert_eq!(
            log.ended(Duration::from_secs(10)).await,
            "starting\nready at=127.0.0.1:9\n"
        );
    }

    #[tokio::test]
    #[should_panic(expected = "the log ended without")]
    async fn a_line_never_written_fails() {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("echo other")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let log = LogLines::spawn(child.stdout.take().unwrap(), false);
        log.line_with("ready", Duration::from_secs(10)).await;
    }
}
