//! Child processes of the platform's own binaries: found next to the
//! running executable, started with files written into a scratch
//! directory, waited for on `/healthz`, stopped with SIGTERM then SIGKILL,
//! and never left behind (killed on drop).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a component may take to answer `/healthz` after its start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a component may take to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The directory holding the workspace's binaries: the running
/// executable's, or its parent for a test binary in `target/*/deps`.
pub fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        Ok(dir.parent().unwrap_or(dir).to_owned())
    } else {
        Ok(dir.to_owned())
    }
}

/// The path of binary `name` of package `package`, or an error naming the
/// command that builds it.
pub fn binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let dir = binary_dir()?;
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        return Ok(path);
    }
    let release = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    bail!(
        "{} not found: the swarm scenarios run the platform's own binaries; build them with `cargo build{release} -p license-server -p tracker -p edge-seed` (missing: {package})",
        path.display()
    )
}

/// A loopback address with a port free now (bound to port 0 and
/// released; TCP and UDP both free, as the tracker and the seed listen on
/// both kinds).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    free_addr_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// [`free_addr`] on `ip` (an address of this host: the network lab's
/// servers listen on the lab's public addresses).
pub fn free_addr_on(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    // A few tries: the port the kernel picks for TCP may be taken for UDP.
    for _ in 0..20 {
        let tcp = TcpListener::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding a free port on {ip}"))?;
        let addr = tcp.local_addr()?;
        if UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no port free for both TCP and UDP after 20 tries")
}

/// Runs `program args` (with `envs` added) to its end, its output in
/// `log_dir/NAME.log`; fails if it fails or runs longer than `timeout`
/// (then it is killed).
pub async fn run_to_end(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, &str)],
    log_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let log_path = log_dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let deadline = Instant::now() + timeout;
    let tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            if status.success() {
                return Ok(());
            }
            bail!("{name} failed ({status}):\n{}", tail());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{name} did not finish within {} s:\n{}",
                timeout.as_secs(),
                tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running child process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Name for messages.
    pub name: String,
    child: Option<Child>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Proc {
    /// Starts `program args` with its output in `log_dir/NAME.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log_dir)
    }

    /// [`Proc::spawn`] with variables added to its environment (kept for
    /// a restart).
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut proc = Self {
            name: name.to_owned(),
            child: None,
            log: log_dir.join(format!("{name}.log")),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs.to_vec(),
        };
        proc.start()?;
        Ok(proc)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts it again with the same arguments (after [`Proc::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start()
    }

    /// Whether it is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it at once (SIGKILL): a crash, as the failure scenarios want.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SIGTERM through the `kill` command: std sends only SIGKILL,
            // and this spares the crate an FFI dependency.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `http` answers `GET /healthz` with 200, at most
    /// [`READY_TIMEOUT`]; fails early if the process exits.
    pub async fn wait_ready(&mut self, http: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if healthy(http).await {
                return Ok(());
            }
            if !self.running() {
                bail!("{} exited at start:\n{}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready on http://{http}/healthz within {} s:\n{}",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // No child outlives the runner, whatever happened.
        self.kill();
    }
}

/// Whether `GET /healthz` on `addr` answers 200 (within a second).
pub async fn healthy(addr: SocketAddr) -> bool {
    tokio::task::spawn_blocking(move || healthz_blocking(addr))
        .await
        .unwrap_or(false)
}

fn healthz_blocking(addr: SocketAddr) -> bool {
    let timeout = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let mut read = 0;
    // At most a few reads: the status line is in the first bytes.
    for _ in 0..8 {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                read += n;
                if read >= 12 {
                    break;
                }
            }
        }
    }
    let status = String::from_utf8_lossy(&head[..read]);
    status.starts_with("HTTP/1.") && status.get(9..12) == Some("200")
}
