//! The connector's instance id: what lets the edge tell a connector that crashed and
//! was started again (the same instance, a new process) from a replica, without
//! writing anything to the board's flash.
//!
//! A connector sends two ids at registration: `connector_id`, random per process, and
//! the instance id ([`crate::wire::RegisterTail`]). When a registration arrives with an
//! instance id the edge already holds under another `connector_id`, the process that
//! opened those connections is gone, and the edge closes them at once.
//!
//! The id must therefore never be shared by two processes alive at the same time (the
//! edge would close a live replica's connections, and the two would replace each other
//! forever), and should be the same for a process and its restart. It is a hash of:
//!
//! - the kernel's boot id (random per boot, kept in the kernel's memory): other boards,
//!   virtual machines and boots differ;
//! - the network namespace: containers on one kernel differ;
//! - the effective user and the tunnel's name;
//! - a slot number: the lowest `n` whose abstract unix socket name
//!   (`@mailslot/instance/<hash>/<n>`, bound but never listening; it exists in the
//!   kernel's memory only) this process could take. Two live processes of one network
//!   namespace cannot hold the same name, and the kernel releases a name the moment its
//!   process dies, so a restarted connector takes the slot its dead predecessor held.
//!
//! Without a boot id, a network namespace or a free slot there is no instance id and
//! the edge replaces nothing (its connections time out as before).

/// Where the kernel keeps the id it draws at each boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// This process's network namespace.
const NET_NS: &str = "/proc/self/ns/net";
/// Most processes of one tunnel, user and namespace that get an instance id.
const MAX_SLOTS: u32 = 32;

/// An instance id, and the socket that holds its slot for as long as it lives.
pub(crate) struct Instance {
    pub(crate) id: [u8; 16],
    _slot: socket2::Socket,
}

impl Instance {
    /// Takes the lowest free slot for `tunnel`; `None` when the system offers no boot
    /// id or network namespace, or every slot is taken.
    pub(crate) fn claim(tunnel: &str) -> Option<Instance> {
        let boot = std::fs::read_to_string(BOOT_ID).ok()?;
        let netns = std::fs::read_link(NET_NS).ok()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let base = base_digest(boot.trim(), &netns.to_string_lossy(), uid, tunnel);
        (0..MAX_SLOTS).find_map(|n| {
            let slot = bind_abstract(&slot_name(&base, n))?;
            Some(Instance {
                id: instance_digest(&base, n),
                _slot: slot,
            })
        })
    }
}

/// Binds a unix stream socket to an abstract name without listening: it accepts
/// nothing, and reserves the name until it is closed.
fn bind_abstract(name: &str) -> Option<socket2::Socket> {
    let mut path = Vec::with_capacity(1 + name.len());
    path.push(0);
    path.extend_from_slice(name.as_bytes());
    let path: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(&path);
    let addr = socket2::SockAddr::unix(path).ok()?;
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).ok()?;
    socket.bind(&addr).ok()?;
    Some(socket)
}

fn base_digest(boot: &str, netns: &str, uid: u32, tunnel: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mailslot connector instance 1\0");
    // Each part length-prefixed: bytes cannot move from one part to the next.
    for part in [
        boot.as_bytes(),
        netns.as_bytes(),
        &uid.to_be_bytes(),
        tunnel.as_bytes(),
    ] {
        ctx.update(&(part.len() as u32).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn slot_name(base: &[u8; 32], n: u32) -> String {
    format!("mailslot/instance/{}/{n}", crate::util::hex(&base[..8]))
}

fn instance_digest(base: &[u8; 32], n: u32) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(base);
    ctx.update(&n.to_be_bytes());
    let mut id = [0u8; 16];
    for (to, from) in id.iter_mut().zip(ctx.finish().as_ref()) {
        *to = *from;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_differ_with_every_part() {
        let boot = "0e6c1a3e-5f0b-4b8e-9a43-6a2f0c0d9b11";
        let net = "net:[4026531840]";
        let base = base_digest(boot, net, 0, "dev42");
        assert_eq!(base, base_digest(boot, net, 0, "dev42"));
        for other in [
            base_digest("1e6c1a3e-5f0b-4b8e-9a43-6a2f0c0d9b11", net, 0, "dev42"),
            base_digest(boot, "net:[4026532001]", 0, "dev42"),
            base_digest(boot, net, 1000, "dev42"),
            base_digest(boot, net, 0, "dev43"),
            base_digest(boot, "net:[4026531840]d", 0, "ev42"),
        ] {
            assert_ne!(base, other);
        }
        assert_ne!(instance_digest(&base, 0), instance_digest(&base, 1));
        assert_eq!(instance_digest(&base, 0), instance_digest(&base, 0));
    }

    #[test]
    fn live_claims_differ_and_a_released_slot_is_taken_again() {
        if !std::path::Path::new(BOOT_ID).exists() {
            return; // not Linux: no instance ids
        }
        // A tunnel name no other test uses: slots are shared by the whole namespace.
        let tunnel = format!("instance-test-{}", std::process::id());
        let a = Instance::claim(&tunnel).expect("an instance id");
        let b = Instance::claim(&tunnel).expect("another one");
        assert_ne!(a.id, b.id, "two live claims never share an id");
        let first = a.id;
        drop(a);
        // The process that held the first slot is gone: its successor takes it.
        let c = Instance::claim(&tunnel).expect("the freed slot");
        assert_eq!(c.id, first);
        drop(b);
    }
}
