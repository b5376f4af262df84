//! The sockets a process holds, read from /proc.

/// Is the process `pid` holding a listening TCP socket?
pub fn listening_tcp_inodes(pid: u32) -> Vec<String> {
    let mut listening = std::collections::HashSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" {
                listening.insert(cols[9].to_string());
            }
        }
    }
    socket_inodes(pid)
        .into_iter()
        .filter(|i| listening.contains(i))
        .collect()
}

/// Inodes of the sockets `pid` holds.
pub fn socket_inodes(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().to_string();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                out.push(i.to_string());
            }
        }
    }
    out
}

/// Local UDP ports of the sockets `pid` holds.
pub fn udp_ports(pid: u32) -> Vec<u16> {
    let inodes = socket_inodes(pid);
    let mut ports = Vec::new();
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(&cols[9].to_string()) {
                if let Some(p) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(p);
                }
            }
        }
    }
    ports
}
