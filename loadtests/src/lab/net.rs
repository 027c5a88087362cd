//! The lab's network: Linux network namespaces joined by veth links, NAT
//! in nftables, link rates with `tc tbf`, built with the `ip`, `nft` and
//! `tc` commands (root only) and torn down when [`Net`] is dropped.
//!
//! Every namespace is named `loaves-lab-PID-N-…` (the runner's process id
//! and a counter), so two labs never share one, and a lab left behind by a
//! runner that was killed outright is recognised (its process is gone) and
//! removed by the next one ([`sweep_stale`]). Interfaces and nftables
//! tables live inside those namespaces only: deleting a namespace deletes
//! them, and nothing of the lab touches the host's own network.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::plan::{CDN_IP, Home, LICENSE_IP, NatKind, SEED_IP, TRACKER_IP};

/// The prefix of every lab namespace.
pub const PREFIX: &str = "loaves-lab-";
/// Longest one `ip`, `nft` or `tc` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

static LABS: AtomicU32 = AtomicU32::new(0);

/// Why the lab cannot run here, if it cannot: not root, or a tool missing.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        });
    match uid.as_deref() {
        Some("0") => {}
        Some(uid) => {
            return Some(format!(
                "the network lab needs root (network namespaces, nftables); running as uid {uid}"
            ));
        }
        None => return Some("cannot read the user id from /proc/self/status".into()),
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("tc", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
    ] {
        let found = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "the network lab needs `{tool}` (Debian package {package}; scripts/test.d/nftables.sh installs it)"
            ));
        }
    }
    None
}

/// Runs `program args` to its end (at most [`COMMAND_TIMEOUT`]), `stdin`
/// fed to it; fails with its standard error when it fails.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{program} {}` took over {COMMAND_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut out);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut err);
    }
    if !status.success() {
        bail!(
            "`{program} {}` failed ({status}): {}",
            args.join(" "),
            err.trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args, None).map(drop)
}

/// The lab's namespaces named in `ip netns list`.
pub fn lab_namespaces() -> anyhow::Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"], None)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Deletes lab namespaces whose runner process is gone (a lab killed with
/// SIGKILL cannot tear itself down), after killing what still runs in
/// them (its servers and viewers). Returns how many.
pub fn sweep_stale() -> anyhow::Result<usize> {
    let mut removed = 0;
    for name in lab_namespaces()? {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let pids = run("ip", &["netns", "pids", &name], None)?;
            for pid in pids.split_whitespace().filter(|p| p.parse::<u32>().is_ok()) {
                let _ = run("kill", &["-KILL", pid], None);
            }
            ip(&["netns", "delete", &name])?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The lab's network, built; every namespace deleted on drop.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    /// Namespaces created, in order.
    namespaces: Vec<String>,
}

impl Net {
    /// Builds the internet and every home of `homes`.
    pub fn build(homes: &[Home]) -> anyhow::Result<Self> {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let mut net = Self {
            prefix: format!("{PREFIX}{}-{n}", std::process::id()),
            namespaces: Vec::new(),
        };
        // On an error, `net` is dropped here: what was built goes.
        net.build_internet()?;
        for home in homes {
            net.build_home(home)
                .with_context(|| format!("building home {}", home.name))?;
        }
        Ok(net)
    }

    /// The internet namespace (servers, and the routes between homes).
    pub fn internet(&self) -> String {
        format!("{}-inet", self.prefix)
    }

    /// The namespace of viewer `j` of `home`.
    pub fn viewer_ns(&self, home: &Home, j: usize) -> String {
        format!("{}-h{}v{j}", self.prefix, home.index)
    }

    fn router_ns(&self, home: &Home) -> String {
        format!("{}-h{}r", self.prefix, home.index)
    }

    fn cgn_ns(&self, home: &Home) -> String {
        format!("{}-h{}c", self.prefix, home.index)
    }

    /// The namespaces this lab created.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build_internet(&mut self) -> anyhow::Result<()> {
        let inet = self.internet();
        self.add_ns(&inet)?;
        for server in [TRACKER_IP, SEED_IP, CDN_IP, LICENSE_IP] {
            ip(&[
                "-n",
                &inet,
                "addr",
                "add",
                &format!("{server}/32"),
                "dev",
                "lo",
            ])?;
        }
        sysctl(&inet, "net.ipv4.ip_forward", "1")?;
        Ok(())
    }

    fn build_home(&mut self, home: &Home) -> anyhow::Result<()> {
        let inet = self.internet();
        let router = self.router_ns(home);
        self.add_ns(&router)?;
        sysctl(&router, "net.ipv4.ip_forward", "1")?;
        let inet_if = format!("h{}", home.index);
        let public = format!("{}/24", home.public_ip());
        let isp = format!("{}/24", home.isp_ip());
        // The box facing the internet: the router, or the carrier NAT.
        let outer = if home.nat == NatKind::Cgnat {
            let cgn = self.cgn_ns(home);
            self.add_ns(&cgn)?;
            sysctl(&cgn, "net.ipv4.ip_forward", "1")?;
            let (inside, router_wan) = home.cgn_link();
            veth(&cgn, "in", &router, "wan")?;
            ip(&[
                "-n",
                &cgn,
                "addr",
                "add",
                &format!("{inside}/24"),
                "dev",
                "in",
            ])?;
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{router_wan}/24"),
                "dev",
                "wan",
            ])?;
            up(&cgn, "in")?;
            up(&router, "wan")?;
            ip(&[
                "-n",
                &router,
                "route",
                "add",
                "default",
                "via",
                &inside.to_string(),
            ])?;
            nft(&cgn, &home.cgn_rules())?;
            cgn
        } else {
            router.clone()
        };
        veth(&inet, &inet_if, &outer, "wan")?;
        ip(&["-n", &inet, "addr", "add", &isp, "dev", &inet_if])?;
        ip(&["-n", &outer, "addr", "add", &public, "dev", "wan"])?;
        up(&inet, &inet_if)?;
        up(&outer, "wan")?;
        ip(&[
            "-n",
            &outer,
            "route",
            "add",
            "default",
            "via",
            &home.isp_ip().to_string(),
        ])?;
        if home.down_kbps > 0 {
            tbf(&inet, &inet_if, home.down_kbps)?;
        }
        if home.up_kbps > 0 {
            tbf(&outer, "wan", home.up_kbps)?;
        }

        // The LAN: a bridge in the router, one veth per viewer.
        ip(&["-n", &router, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{}/24", home.gateway_ip()),
            "dev",
            "br0",
        ])?;
        up(&router, "br0")?;
        // Bridged LAN traffic skips the router's IP firewall (where the
        // host has br_netfilter loaded; `-e`: no such setting otherwise).
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qew",
                "net.bridge.bridge-nf-call-iptables=0",
            ],
            None,
        )?;
        for (j, viewer) in home.viewers.iter().enumerate() {
            let ns = self.viewer_ns(home, j);
            self.add_ns(&ns)?;
            let port = format!("l{j}");
            veth(&router, &port, &ns, "eth0")?;
            ip(&["-n", &router, "link", "set", &port, "master", "br0"])?;
            up(&router, &port)?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", viewer.lan_ip),
                "dev",
                "eth0",
            ])?;
            up(&ns, "eth0")?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &home.gateway_ip().to_string(),
            ])?;
        }
        nft(&router, &home.router_rules())?;
        Ok(())
    }

    /// Deletes every namespace (what is inside goes with it). Idempotent.
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        // The viewers' first, the internet last.
        while let Some(name) = self.namespaces.pop() {
            if let Err(e) = ip(&["netns", "delete", &name]) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lab: tearing down {}: {e:#}", self.prefix);
        }
    }
}

fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> anyhow::Result<()> {
    ip(&[
        "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b,
    ])
}

fn up(ns: &str, dev: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "link", "set", dev, "up"])
}

fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
        None,
    )
    .map(drop)
}

fn nft(ns: &str, rules: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(rules))
        .map(drop)
        .with_context(|| format!("loading the nftables rules in {ns}:\n{rules}"))
}

/// A token bucket on `dev`'s egress: `kbps` kilobits per second, a burst of
/// 50 ms of it (at least 16 KB, a few full-size packets), 200 ms of queue.
fn tbf(ns: &str, dev: &str, kbps: u64) -> anyhow::Result<()> {
    let burst = (kbps.saturating_mul(1000) / 8 / 20).max(16 * 1024);
    run(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{kbps}kbit"),
            "burst",
            &burst.to_string(),
            "latency",
            "200ms",
        ],
        None,
    )
    .map(drop)
}

/// Moves the calling thread into network namespace `name` (threads it
/// starts afterwards, and the processes they spawn, are in it too).
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("entering the network namespace {name}"))?;
    Ok(())
}
