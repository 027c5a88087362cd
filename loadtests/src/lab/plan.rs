//! The lab's scenario file and its plan: which homes, behind which NAT,
//! with which addresses, and the nftables rules of each router. Pure: no
//! namespace is touched here, so the address plan and the rules are
//! tested without root.
//!
//! Address plan (home `h`, 1-based, at most [`MAX_HOMES`]):
//!
//! - the "internet" namespace holds the servers on `198.18.0.1` (tracker),
//!   `.2` (swarm seed), `.3` (CDN origin), `.4` (license server), and one
//!   link per home: `198.19.h.1/24` on its side, `198.19.h.2/24` on the
//!   home's (the public address of the home, or of its carrier NAT);
//! - a home's LAN is `10.h.0.0/24` on a bridge in its router, the router
//!   at `.1`, viewers from `.10`;
//! - behind a carrier NAT, the home router's WAN is `100.64.h.2/24` and
//!   the carrier NAT's inside `100.64.h.1/24` (the shared address space).
//!
//! 198.18.0.0/15 is the benchmarking range (RFC 2544): not a LAN address
//! to the SDK, so the lab's internet looks public to the viewers, and it
//! is routed nowhere outside.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

/// Most homes in one lab (one /24 per home in 198.19.0.0/16 and 10.0.0.0/8).
pub const MAX_HOMES: usize = 250;
/// Most viewers behind one router.
pub const MAX_VIEWERS_PER_HOME: usize = 8;
/// The first UDP port of a viewer's peer socket (viewer `n` of the lab
/// binds `FIRST_PORT + n`: distinct ports keep a port-preserving NAT's
/// mapping equal to the socket's port, so a mapping names its viewer).
pub const FIRST_PORT: u16 = 41_000;

/// The tracker's address in the lab's internet.
pub const TRACKER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The swarm seed's (a second observer of every viewer's NAT mapping).
pub const SEED_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The CDN origin's.
pub const CDN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The license server's.
pub const LICENSE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);

/// What a home's connection to the internet does to UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering: once a viewer sent from
    /// its port, anyone may send to the mapping.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering:
    /// only whom the viewer sent to may answer (Linux masquerade with
    /// conntrack, the commonest home router).
    PortRestricted,
    /// Endpoint-dependent mapping: a new public port per destination
    /// (`masquerade random`).
    Symmetric,
    /// A port-restricted home router behind a carrier-grade NAT (also
    /// port-restricted): two NAT layers, 100.64.0.0/10 between them.
    Cgnat,
    /// A port-restricted router that drops all forwarded UDP (a captive or
    /// corporate network): no QUIC at all, the CDN over TCP only.
    UdpBlocked,
}

impl NatKind {
    /// The short name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::FullCone => "full-cone",
            Self::PortRestricted => "port-restricted",
            Self::Symmetric => "symmetric",
            Self::Cgnat => "cgnat",
            Self::UdpBlocked => "udp-blocked",
        }
    }

    /// Whether two viewers behind NATs of these kinds (in different homes)
    /// can connect directly by hole punching, as the theory of these NATs
    /// says: not when one side's UDP is blocked; a symmetric NAT only
    /// towards a full cone (its packets come from a port the other side
    /// never sent to, which only endpoint-independent filtering lets in).
    pub fn can_punch(self, other: Self) -> bool {
        use NatKind::{FullCone, Symmetric, UdpBlocked};
        match (self, other) {
            (UdpBlocked, _) | (_, UdpBlocked) => false,
            (Symmetric, o) | (o, Symmetric) => o == FullCone,
            _ => true,
        }
    }
}

/// One kind of home in a scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeSpec {
    /// Name (homes of `count > 1` get `-1`, `-2`… appended).
    pub name: String,
    /// The NAT in front of it.
    pub nat: NatKind,
    /// Viewers behind its router (on one LAN).
    #[serde(default = "one")]
    pub viewers: usize,
    /// Homes like this one.
    #[serde(default = "one")]
    pub count: usize,
    /// Uplink rate, kilobits per second (`tc tbf`; 0: unlimited).
    #[serde(default)]
    pub up_kbps: u64,
    /// Downlink rate, kilobits per second (0: unlimited).
    #[serde(default)]
    pub down_kbps: u64,
    /// Packets the router drops at random, percent (nftables `numgen`).
    #[serde(default)]
    pub loss_percent: u8,
}

fn one() -> usize {
    1
}

fn default_watch_s() -> u64 {
    20
}

fn default_latency_segments() -> u64 {
    2
}

fn default_join_interval_ms() -> u64 {
    300
}

/// A lab scenario (`loadtests/lab/*.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seconds of the live title each viewer watches.
    #[serde(default = "default_watch_s")]
    pub watch_s: u64,
    /// Viewers start this many segments behind the live edge.
    #[serde(default = "default_latency_segments")]
    pub latency_segments: u64,
    /// Milliseconds between two viewers starting.
    #[serde(default = "default_join_interval_ms")]
    pub join_interval_ms: u64,
    /// Each viewer's upload cap, kilobits per second (`None`: the SDK's
    /// default).
    #[serde(default)]
    pub viewer_upload_kbps: Option<u64>,
    /// The homes.
    #[serde(rename = "home")]
    pub homes: Vec<HomeSpec>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let scenario: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        scenario
            .plan()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(scenario)
    }

    /// The homes and viewers, with their addresses.
    pub fn plan(&self) -> anyhow::Result<Vec<Home>> {
        ensure!(self.watch_s > 0, "watch_s must be positive");
        let mut homes: Vec<Home> = Vec::new();
        let mut viewers = 0usize;
        for spec in &self.homes {
            ensure!(
                spec.count >= 1,
                "home {}: count must be at least 1",
                spec.name
            );
            ensure!(
                (1..=MAX_VIEWERS_PER_HOME).contains(&spec.viewers),
                "home {}: 1 to {MAX_VIEWERS_PER_HOME} viewers",
                spec.name
            );
            ensure!(
                spec.loss_percent <= 100,
                "home {}: loss_percent is a percentage",
                spec.name
            );
            ensure!(
                !spec.name.is_empty()
                    && spec
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "home name {:?}: letters, digits and '-' only",
                spec.name
            );
            for n in 1..=spec.count {
                let index = homes.len() + 1;
                if index > MAX_HOMES {
                    bail!("more than {MAX_HOMES} homes");
                }
                let name = if spec.count == 1 {
                    spec.name.clone()
                } else {
                    format!("{}-{n}", spec.name)
                };
                if homes.iter().any(|h| h.name == name) {
                    bail!("two homes named {name}");
                }
                let h = u8::try_from(index).context("home index")?;
                let mut home = Home {
                    index: h,
                    name,
                    nat: spec.nat,
                    up_kbps: spec.up_kbps,
                    down_kbps: spec.down_kbps,
                    loss_percent: spec.loss_percent,
                    viewers: Vec::new(),
                };
                for j in 0..spec.viewers {
                    let port = u16::try_from(viewers)
                        .ok()
                        .and_then(|v| FIRST_PORT.checked_add(v))
                        .context("too many viewers")?;
                    let host = u8::try_from(10 + j).context("viewer index")?;
                    home.viewers.push(Viewer {
                        name: if spec.viewers == 1 {
                            home.name.clone()
                        } else {
                            format!("{}.{}", home.name, j + 1)
                        },
                        home: homes.len(),
                        lan_ip: Ipv4Addr::new(10, h, 0, host),
                        port,
                    });
                    viewers += 1;
                }
                homes.push(home);
            }
        }
        ensure!(viewers > 0, "the scenario has no viewer");
        Ok(homes)
    }
}

/// One home: a router (and a carrier NAT for [`NatKind::Cgnat`]) and its
/// viewers.
#[derive(Debug, Clone, Serialize)]
pub struct Home {
    /// 1-based; the third octet of its addresses.
    pub index: u8,
    /// Name.
    pub name: String,
    /// Its NAT.
    pub nat: NatKind,
    /// Uplink rate, kbit/s (0: unlimited).
    pub up_kbps: u64,
    /// Downlink rate, kbit/s (0: unlimited).
    pub down_kbps: u64,
    /// Random drops, percent.
    pub loss_percent: u8,
    /// Its viewers.
    pub viewers: Vec<Viewer>,
}

/// One viewer process.
#[derive(Debug, Clone, Serialize)]
pub struct Viewer {
    /// Name (the home's, with `.N` when it has several).
    pub name: String,
    /// Index of its home in the plan.
    pub home: usize,
    /// Its address on the home LAN.
    pub lan_ip: Ipv4Addr,
    /// The UDP port its peer socket binds.
    pub port: u16,
}

impl Home {
    /// The internet's end of the home's link.
    pub fn isp_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.index, 1)
    }

    /// The home's public address (its router's WAN, or its carrier NAT's
    /// outside).
    pub fn public_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.index, 2)
    }

    /// The router's LAN address (the viewers' gateway).
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.index, 0, 1)
    }

    /// Carrier NAT inside, home router WAN (only for [`NatKind::Cgnat`]).
    pub fn cgn_link(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::new(100, 64, self.index, 1),
            Ipv4Addr::new(100, 64, self.index, 2),
        )
    }

    /// The home router's nftables ruleset (its WAN interface is `wan`, its
    /// LAN bridge `br0`).
    pub fn router_rules(&self) -> String {
        let masquerade = match self.nat {
            NatKind::Symmetric => "masquerade random",
            _ => "masquerade",
        };
        let mut prerouting = String::new();
        if self.nat == NatKind::FullCone {
            // Endpoint-independent filtering: whatever reaches the public
            // port of a viewer's socket is let in to it, from anyone.
            for viewer in &self.viewers {
                let _ = writeln!(
                    prerouting,
                    "        iifname \"wan\" udp dport {port} dnat to {ip}:{port}",
                    port = viewer.port,
                    ip = viewer.lan_ip
                );
            }
        }
        let mut forward = String::new();
        if self.loss_percent > 0 {
            let _ = writeln!(
                forward,
                "        numgen random mod 100 < {} drop",
                self.loss_percent
            );
        }
        if self.nat == NatKind::UdpBlocked {
            forward.push_str("        meta l4proto udp drop\n");
        }
        forward.push_str("        ct state established,related accept\n");
        if self.nat == NatKind::FullCone {
            forward.push_str("        ct status dnat accept\n");
        }
        forward.push_str("        iifname \"br0\" oifname \"wan\" accept\n");
        // Within the LAN (bridged traffic meets this hook where the host
        // has br_netfilter loaded, with the bridge as both interfaces).
        forward.push_str("        iifname \"br0\" oifname \"br0\" accept\n");
        nat_table(&prerouting, masquerade, &forward)
    }

    /// The carrier NAT's ruleset (inside `in`, outside `wan`):
    /// endpoint-independent mapping, port-restricted filtering.
    pub fn cgn_rules(&self) -> String {
        let mut forward = String::new();
        forward.push_str("        ct state established,related accept\n");
        forward.push_str("        iifname \"in\" oifname \"wan\" accept\n");
        nat_table("", "masquerade", &forward)
    }
}

/// The name of every lab's nftables table (in the lab's own namespaces).
pub const NFT_TABLE: &str = "loaves_lab";

/// The table of a NAT box. Its `input` chain drops what arrives unasked
/// on the WAN (as a home router's firewall does): accepted, such a packet
/// would leave a conntrack entry that makes the box pick another public
/// port when the viewer then sends to the same peer, which would break
/// hole punching for a reason no real router has.
fn nat_table(prerouting: &str, masquerade: &str, forward: &str) -> String {
    format!(
        "table ip {NFT_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"wan\" ct state new drop
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
{prerouting}    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan\" {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
{forward}    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scenario(text: &str) -> Scenario {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn homes_are_numbered_and_viewers_get_distinct_ports() {
        let s = scenario(
            r#"
            name = "t"
            [[home]]
            name = "pr"
            nat = "port-restricted"
            count = 2
            [[home]]
            name = "lan"
            nat = "full-cone"
            viewers = 2
            "#,
        );
        let homes = s.plan().unwrap();
        let names: Vec<&str> = homes.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["pr-1", "pr-2", "lan"]);
        assert_eq!(homes[2].public_ip(), Ipv4Addr::new(198, 19, 3, 2));
        let viewers: Vec<(&str, Ipv4Addr, u16)> = homes
            .iter()
            .flat_map(|h| &h.viewers)
            .map(|v| (v.name.as_str(), v.lan_ip, v.port))
            .collect();
        assert_eq!(
            viewers,
            [
                ("pr-1", Ipv4Addr::new(10, 1, 0, 10), FIRST_PORT),
                ("pr-2", Ipv4Addr::new(10, 2, 0, 10), FIRST_PORT + 1),
                ("lan.1", Ipv4Addr::new(10, 3, 0, 10), FIRST_PORT + 2),
                ("lan.2", Ipv4Addr::new(10, 3, 0, 11), FIRST_PORT + 3),
            ]
        );
        assert!(
            homes
                .iter()
                .flat_map(|h| &h.viewers)
                .all(|v| homes[v.home].viewers.iter().any(|w| w.name == v.name))
        );
    }

    #[test]
    fn bad_scenarios_are_refused() {
        let base = "name = \"t\"\n";
        for bad in [
            "[[home]]\nname = \"a\"\nnat = \"full-cone\"\nviewers = 0\n",
            "[[home]]\nname = \"a\"\nnat = \"full-cone\"\nviewers = 9\n",
            "[[home]]\nname = \"a b\"\nnat = \"full-cone\"\n",
            "[[home]]\nname = \"a\"\nnat = \"full-cone\"\n[[home]]\nname = \"a\"\nnat = \"symmetric\"\n",
            "[[home]]\nname = \"a\"\nnat = \"full-cone\"\ncount = 251\n",
            "[[home]]\nname = \"a\"\nnat = \"full-cone\"\nloss_percent = 101\n",
            "home = []\n",
        ] {
            let s = scenario(&format!("{base}{bad}"));
            assert!(s.plan().is_err(), "accepted: {bad}");
        }
        assert!(
            toml::from_str::<Scenario>("name = \"t\"\n[[home]]\nname = \"a\"\nnat = \"open\"\n")
                .is_err()
        );
    }

    #[test]
    fn the_rules_of_each_nat() {
        let s = scenario(
            r#"
            name = "t"
            [[home]]
            name = "fc"
            nat = "full-cone"
            viewers = 2
            [[home]]
            name = "sym"
            nat = "symmetric"
            [[home]]
            name = "udp"
            nat = "udp-blocked"
            loss_percent = 3
            "#,
        );
        let homes = s.plan().unwrap();
        let fc = homes[0].router_rules();
        assert!(
            fc.contains("iifname \"wan\" udp dport 41000 dnat to 10.1.0.10:41000"),
            "{fc}"
        );
        assert!(
            fc.contains("iifname \"wan\" udp dport 41001 dnat to 10.1.0.11:41001"),
            "{fc}"
        );
        assert!(fc.contains("ct status dnat accept"), "{fc}");
        assert!(fc.contains("oifname \"wan\" masquerade\n"), "{fc}");
        let sym = homes[1].router_rules();
        assert!(sym.contains("oifname \"wan\" masquerade random\n"), "{sym}");
        assert!(!sym.contains("dnat"), "{sym}");
        let udp = homes[2].router_rules();
        let drop = udp.find("meta l4proto udp drop").unwrap();
        let established = udp.find("ct state established,related accept").unwrap();
        assert!(
            drop < established,
            "UDP must be dropped before replies pass: {udp}"
        );
        assert!(udp.contains("numgen random mod 100 < 3 drop"), "{udp}");
        assert!(!homes[0].cgn_rules().contains("dnat"));
        for rules in [fc, sym, udp, homes[0].cgn_rules()] {
            assert!(
                rules.contains("iifname \"wan\" ct state new drop"),
                "{rules}"
            );
        }
    }

    #[test]
    fn which_pairs_can_punch() {
        use NatKind::*;
        assert!(PortRestricted.can_punch(PortRestricted));
        assert!(Symmetric.can_punch(FullCone));
        assert!(FullCone.can_punch(Symmetric));
        assert!(Cgnat.can_punch(PortRestricted));
        assert!(!Symmetric.can_punch(Symmetric));
        assert!(!Symmetric.can_punch(PortRestricted));
        assert!(!Cgnat.can_punch(Symmetric));
        assert!(!UdpBlocked.can_punch(FullCone));
    }

    #[test]
    fn the_committed_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 2, "{seen} scenarios in {}", dir.display());
    }
}
