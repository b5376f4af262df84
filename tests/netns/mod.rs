//! Network namespaces for scenario tests: a device behind a carrier-like NAT, two edges
//! and a visitor, joined by a router. Built per test with unique names and removed on
//! drop (also when the test panics), so tests run in parallel and leave nothing behind.
//!
//! ```text
//!  device 192.168.77.2 ── .1 nat 100.64.0.2 ── .1 ┐
//!  (INPUT: DROP but replies)  (MASQUERADE)         │ wan (router)
//!                          edge1 10.1.0.2 ── .1 ───┤
//!                          edge2 10.2.0.2 ── .1 ───┤
//!                        visitor 10.3.0.2 ── .1 ───┘
//! ```
//!
//! More devices behind the same NAT ([`Net::add_device`]) get a link of their own each:
//! device `n` is 192.168.(100+n).2 behind the NAT's 192.168.(100+n).1, with the same
//! closed firewall.
//!
//! More edges on the router ([`Net::add_edge`]): edge `n` (from 3) is 10.(10+n).0.2. A
//! Redis namespace ([`Net::add_redis`]), 10.20.0.2, takes TCP only from the edges'
//! addresses (its firewall drops everything else, the device side included).
//!
//! Only these private addresses and loopback are used. Interface names are only unique
//! inside each namespace: veths are created with their peer directly in the other
//! namespace, so nothing ever lands in the root namespace.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const DEVICE_IP: &str = "192.168.77.2";
pub const NAT_LAN_IP: &str = "192.168.77.1";
pub const NAT_WAN_IP: &str = "100.64.0.2";
pub const EDGE_IPS: [&str; 2] = ["10.1.0.2", "10.2.0.2"];
pub const VISITOR_IP: &str = "10.3.0.2";
/// The UDP port window the NAT maps connector flows to, and the one after a rebinding.
pub const NAT_UDP_PORTS: [&str; 2] = ["20000-20999", "40000-40999"];

/// Why this process cannot build the namespaces (not root, `ip`, `iptables`,
/// `conntrack`, `curl` or `python3` missing), or `None` when it can.
pub fn missing() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Some("network-namespace scenarios need root (CI runs them as root)".into());
    }
    missing_tools(&["ip", "iptables", "conntrack", "curl", "python3"])
}

/// The first of `tools` that is not installed, said as a reason to skip.
pub fn missing_tools(tools: &[&str]) -> Option<String> {
    tools.iter().find_map(|tool| {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        (!found).then(|| format!("`{tool}` is not installed"))
    })
}

/// Why the NFQUEUE delay program (`delay.py`) cannot run, or `None` when it can.
pub fn netfilterqueue_missing() -> Option<String> {
    let has = Command::new("python3")
        .args(["-c", "import netfilterqueue"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!has).then(|| "python3 module netfilterqueue (PyPI NetfilterQueue) is missing".into())
}

/// The namespaces of one test.
pub struct Net {
    pub device: String,
    pub nat: String,
    pub wan: String,
    pub edges: [String; 2],
    pub visitor: String,
    /// Devices added by [`Net::add_device`], in order.
    pub more_devices: Vec<String>,
    /// Edges added by [`Net::add_edge`], in order: (namespace, address).
    pub more_edges: Vec<(String, String)>,
    /// The Redis namespace, once [`Net::add_redis`] made it.
    pub redis: Option<String>,
    tag: String,
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

impl Net {
    /// Builds the topology. Panics (after cleaning up) when a step fails.
    pub fn new() -> Net {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "ms{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let name = |role: &str| format!("{tag}-{role}");
        let net = Net {
            device: name("dev"),
            nat: name("nat"),
            wan: name("wan"),
            edges: [name("e1"), name("e2")],
            visitor: name("vis"),
            more_devices: Vec::new(),
            more_edges: Vec::new(),
            redis: None,
            tag: tag.clone(),
        };
        for ns in net.all() {
            net.ok(&["ip", "netns", "add", ns]);
            net.sh(ns, "ip link set lo up");
        }
        // The device's firewall first, before it has any link: nothing gets in but
        // replies to its own connections.
        net.close_firewall(&net.device);
        net.veth(
            &net.nat,
            "lan0",
            NAT_LAN_IP,
            &net.device,
            "eth0",
            DEVICE_IP,
            24,
        );
        net.veth(
            &net.wan,
            "nat0",
            "100.64.0.1",
            &net.nat,
            "wan0",
            NAT_WAN_IP,
            24,
        );
        let edge_links = [("e1", "10.1.0.1"), ("e2", "10.2.0.1")];
        for (i, (ifname, gw)) in edge_links.iter().enumerate() {
            net.veth(&net.wan, ifname, gw, &net.edges[i], "eth0", EDGE_IPS[i], 24);
            net.sh(&net.edges[i], &format!("ip route add default via {gw}"));
        }
        net.veth(
            &net.wan,
            "vis",
            "10.3.0.1",
            &net.visitor,
            "eth0",
            VISITOR_IP,
            24,
        );
        net.sh(&net.visitor, "ip route add default via 10.3.0.1");
        net.sh(
            &net.device,
            &format!("ip route add default via {NAT_LAN_IP}"),
        );
        net.sh(
            &net.nat,
            "sysctl -qw net.ipv4.ip_forward=1 && ip route add default via 100.64.0.1",
        );
        // The router knows the device subnet, so scans reach the device's own firewall.
        net.sh(
            &net.wan,
            &format!(
                "sysctl -qw net.ipv4.ip_forward=1 && ip route add 192.168.77.0/24 via {NAT_WAN_IP}"
            ),
        );
        // Carrier NAT: every flow from the device leaves from the NAT's address; UDP
        // from a port window so a rebinding can move it to another.
        net.sh(
            &net.nat,
            &format!(
                "iptables -t nat -A POSTROUTING -o wan0 -p udp -j MASQUERADE --to-ports {} && \
                 iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE",
                NAT_UDP_PORTS[0]
            ),
        );
        net
    }

    fn all(&self) -> Vec<&String> {
        let mut v = vec![&self.device, &self.nat, &self.wan];
        v.extend(self.edges.iter());
        v.push(&self.visitor);
        v.extend(self.more_devices.iter());
        v.extend(self.more_edges.iter().map(|(ns, _)| ns));
        v.extend(self.redis.iter());
        v
    }

    /// Drops every packet coming into `ns` but loopback and replies to its own flows.
    fn close_firewall(&self, ns: &str) {
        self.sh(
            ns,
            "iptables -P INPUT DROP && iptables -A INPUT -i lo -j ACCEPT && \
             iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
             ip6tables -P INPUT DROP && ip6tables -A INPUT -i lo -j ACCEPT && \
             ip6tables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        );
    }

    /// Another device behind the NAT, with a link of its own and the same closed
    /// firewall; its namespace's name. At most 100 (the subnets 192.168.101-200.0/24).
    pub fn add_device(&mut self) -> String {
        let n = self.more_devices.len() + 1;
        assert!(n <= 100, "at most 100 more devices");
        let ns = format!("{}-d{n}", self.tag);
        self.ok(&["ip", "netns", "add", &ns]);
        // Listed before anything can fail, so that drop removes it.
        self.more_devices.push(ns.clone());
        self.sh(&ns, "ip link set lo up");
        self.close_firewall(&ns);
        let (gw, ip) = (
            format!("192.168.{}.1", 100 + n),
            format!("192.168.{}.2", 100 + n),
        );
        self.veth(&self.nat, &format!("lan{n}"), &gw, &ns, "eth0", &ip, 24);
        self.sh(&ns, &format!("ip route add default via {gw}"));
        ns
    }

    /// Another edge namespace on the router, beside edges 1 and 2: (namespace, address).
    /// Edge `n` (3, 4, ...) is 10.(10+n).0.2; at most 8 more.
    pub fn add_edge(&mut self) -> (String, String) {
        let n = self.more_edges.len() + 3;
        assert!(n <= 10, "at most 8 more edges");
        let ns = format!("{}-e{n}", self.tag);
        self.ok(&["ip", "netns", "add", &ns]);
        let ip = format!("10.{}.0.2", 10 + n);
        // Listed before anything can fail, so that drop removes it.
        self.more_edges.push((ns.clone(), ip.clone()));
        self.sh(&ns, "ip link set lo up");
        let gw = format!("10.{}.0.1", 10 + n);
        self.veth(&self.wan, &format!("e{n}"), &gw, &ns, "eth0", &ip, 24);
        self.sh(&ns, &format!("ip route add default via {gw}"));
        (ns, ip)
    }

    /// The Redis namespace on the router, 10.20.0.2 (returned): its firewall lets in TCP
    /// from `clients` (the edges' addresses) and replies, and drops everything else.
    pub fn add_redis(&mut self, clients: &[&str]) -> String {
        assert!(self.redis.is_none(), "one Redis namespace");
        let ns = format!("{}-redis", self.tag);
        self.ok(&["ip", "netns", "add", &ns]);
        self.redis = Some(ns.clone());
        self.sh(&ns, "ip link set lo up");
        self.close_firewall(&ns);
        for ip in clients {
            self.sh(&ns, &format!("iptables -A INPUT -p tcp -s {ip} -j ACCEPT"));
        }
        self.veth(
            &self.wan,
            "redis",
            "10.20.0.1",
            &ns,
            "eth0",
            "10.20.0.2",
            24,
        );
        self.sh(&ns, "ip route add default via 10.20.0.1");
        "10.20.0.2".to_string()
    }

    /// A veth pair: `a_if` (in `a`, `a_ip`) to `b_if` (in `b`, `b_ip`).
    #[allow(clippy::too_many_arguments)]
    fn veth(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str, len: u8) {
        self.sh(
            a,
            &format!(
                "ip link add {a_if} type veth peer name {b_if} netns {b} && \
                 ip addr add {a_ip}/{len} dev {a_if} && ip link set {a_if} up"
            ),
        );
        self.sh(
            b,
            &format!("ip addr add {b_ip}/{len} dev {b_if} && ip link set {b_if} up"),
        );
    }

    fn ok(&self, args: &[&str]) {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a shell command line in namespace `ns`; panics when it fails.
    pub fn sh(&self, ns: &str, line: &str) -> String {
        let out = self.sh_status(ns, line);
        assert!(
            out.status.success(),
            "in {ns}: `{line}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command line in namespace `ns`; its output, whatever the status.
    pub fn sh_status(&self, ns: &str, line: &str) -> Output {
        run(&["ip", "netns", "exec", ns, "sh", "-c", line])
    }

    /// Writes `/etc/netns/<ns>/<file>`: `ip netns exec` mounts it over `/etc/<file>` for
    /// the programs it starts from then on (resolv.conf, hosts, nsswitch.conf), so a
    /// namespace gets its own name resolution without touching the machine's. Later
    /// writes go to the same file, so programs already running see them too.
    pub fn etc(&self, ns: &str, file: &str, content: &str) {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file);
        // Rewritten in place (same inode): the mount in running programs stays valid.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        std::io::Write::write_all(&mut f, content.as_bytes()).unwrap();
    }

    /// The counters of the rules in `chain` (filter table) of namespace `ns` that carry
    /// a comment (`-m comment --comment NAME`), summed by name: (name, packets, bytes),
    /// in the order the names first appear.
    pub fn counters(&self, ns: &str, chain: &str) -> Vec<(String, u64, u64)> {
        let listing = self.sh(ns, &format!("iptables -L {chain} -v -n -x"));
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for line in listing.lines() {
            let (Some(start), Some(end)) = (line.find("/* "), line.find(" */")) else {
                continue;
            };
            let mut fields = line.split_whitespace();
            let (Some(pkts), Some(bytes)) = (fields.next(), fields.next()) else {
                continue;
            };
            let (Ok(pkts), Ok(bytes)) = (pkts.parse::<u64>(), bytes.parse::<u64>()) else {
                continue;
            };
            let name = &line[start + 3..end];
            match out.iter_mut().find(|(n, _, _)| n == name) {
                Some(c) => {
                    c.1 += pkts;
                    c.2 += bytes;
                }
                None => out.push((name.to_string(), pkts, bytes)),
            }
        }
        out
    }

    /// A command that runs `program` in namespace `ns`.
    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.all() {
            // Processes still inside (those the test started and did not stop) go first,
            // by id; then the namespace, which removes its links and rules with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(ns));
        }
    }
}
