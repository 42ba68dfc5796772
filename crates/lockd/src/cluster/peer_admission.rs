//! Who gets a place on the peer port: [`PeerAdmission`] hands out a [`PeerSlot`] per accepted
//! connection, or says why it refuses one.
//!
//! A stranger must not be able to keep the nodes from reaching each other. So the port has two
//! pools: `--peer-max-connections` general slots that anyone may take, and
//! [`RESERVED_MEMBER_SLOTS`] more that only the addresses of the cluster's members may take
//! once the general ones are gone; and an address that is not a member's may have at most
//! `--peer-max-handshakes-per-ip` connections that have not finished their handshake. A flood
//! from other addresses can fill the general slots, but never the reserved ones, and a new
//! election's connections still get in. A member's address is its `--peers` entry or its
//! address in the replicated membership, resolved to IPs ([`watch_member_addresses`]);
//! members are not capped per address, since several nodes may share one (behind NAT, or on one
//! host) and each opens a few connections at once after a restart.
//!
//! This module counts and decides; it owns no socket. It never reads the clock.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use openraft::async_runtime::WatchReceiver;
use openraft::storage::RaftStateMachine;
use openraft::{Raft, RaftTypeConfig};
use tokio::sync::watch;
use tracing::warn;

use super::network::PeerAddress;

/// The default of `--peer-max-connections`. openraft opens a few connections per peer
/// (replication, elections), so this is far above a healthy cluster's need; it bounds what a
/// flood costs.
pub const DEFAULT_MAX_PEER_CONNECTIONS: usize = 256;

/// The default of `--peer-max-handshakes-per-ip`: a node opens one connection per replication
/// stream and per election, so a real peer never needs more at once.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 8;

/// Slots that only members' addresses may take, beyond the general ones: room for every
/// connection a few dozen members open to one node at once.
pub const RESERVED_MEMBER_SLOTS: usize = 64;

/// The peer port's limits.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// General slots, for any address (`--peer-max-connections`).
    pub max_connections: usize,
    /// Connections a non-member address may have open before their handshake is done
    /// (`--peer-max-handshakes-per-ip`).
    pub max_handshakes_per_ip: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_connections: DEFAULT_MAX_PEER_CONNECTIONS,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
        }
    }
}

/// Counts the peer port's open connections and decides who gets a slot.
#[derive(Debug)]
pub struct PeerAdmission {
    limits: PeerLimits,
    counts: Arc<Mutex<Counts>>,
    /// The members' IP addresses, kept current by [`watch_member_addresses`].
    members: watch::Receiver<HashSet<IpAddr>>,
}

#[derive(Debug, Default)]
struct Counts {
    general: usize,
    reserved: usize,
    /// Connections per non-member address that have not finished their handshake.
    handshaking: HashMap<IpAddr, usize>,
}

/// Why a peer connection was refused at accept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefused {
    /// Every slot this address may take is in use.
    #[error(
        "{open} peer connections are open, the limit (--peer-max-connections, plus the slots \
         reserved for members)"
    )]
    Full {
        /// Connections open.
        open: usize,
    },
    /// The address, not a member's, has too many connections in their handshake.
    #[error(
        "{ip} is not a member's address and has {open} connections before their handshake, the \
         limit (--peer-max-handshakes-per-ip)"
    )]
    Handshakes {
        /// The address.
        ip: IpAddr,
        /// Its connections in their handshake.
        open: usize,
    },
}

/// An admitted peer connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct PeerSlot {
    counts: Arc<Mutex<Counts>>,
    reserved: bool,
    /// The address whose handshake count this connection is in, until its handshake is done.
    handshaking: Option<IpAddr>,
}

impl PeerAdmission {
    /// Admission under `limits`, with `members` as the members' addresses.
    pub fn new(limits: PeerLimits, members: watch::Receiver<HashSet<IpAddr>>) -> Self {
        PeerAdmission {
            limits,
            counts: Arc::default(),
            members,
        }
    }

    /// A slot for a connection from `ip`, or why it is refused.
    pub fn admit(&self, ip: IpAddr) -> Result<PeerSlot, PeerRefused> {
        let member = self.members.borrow().contains(&ip);
        let mut counts = lock(&self.counts);
        let handshaking = if member {
            None
        } else {
            let open = counts.handshaking.get(&ip).copied().unwrap_or(0);
            if open >= self.limits.max_handshakes_per_ip {
                return Err(PeerRefused::Handshakes { ip, open });
            }
            Some(ip)
        };
        let reserved = if counts.general < self.limits.max_connections {
            false
        } else if member && counts.reserved < RESERVED_MEMBER_SLOTS {
            true
        } else {
            return Err(PeerRefused::Full {
                open: counts.general + counts.reserved,
            });
        };
        if reserved {
            counts.reserved += 1;
        } else {
            counts.general += 1;
        }
        if let Some(ip) = handshaking {
            *counts.handshaking.entry(ip).or_default() += 1;
        }
        Ok(PeerSlot {
            counts: Arc::clone(&self.counts),
            reserved,
            handshaking,
        })
    }
}

impl PeerSlot {
    /// Called once the connection's peer is authenticated: it no longer counts toward its
    /// address's handshakes.
    pub fn handshake_done(&mut self) {
        if let Some(ip) = self.handshaking.take() {
            release_handshake(&mut lock(&self.counts), ip);
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if self.reserved {
            counts.reserved -= 1;
        } else {
            counts.general -= 1;
        }
        if let Some(ip) = self.handshaking.take() {
            release_handshake(&mut counts, ip);
        }
    }
}

fn release_handshake(counts: &mut Counts, ip: IpAddr) {
    if let Some(open) = counts.handshaking.get_mut(&ip) {
        *open -= 1;
        if *open == 0 {
            counts.handshaking.remove(&ip);
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // Every update is a few integer operations that cannot panic halfway; a poisoned lock
    // still holds consistent counts.
    counts.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The IP addresses of the cluster's members, kept current: those of `configured` (the
/// `--peers` addresses) and of every node in `raft`'s membership, resolved again whenever the
/// membership changes. The task ends with the Raft node.
pub fn watch_member_addresses<C, SM>(
    raft: &Raft<C, SM>,
    configured: Vec<String>,
) -> watch::Receiver<HashSet<IpAddr>>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
    C::Node: PeerAddress,
{
    let (sender, receiver) = watch::channel(HashSet::new());
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        let mut known: Option<Vec<String>> = None;
        loop {
            let mut addrs: Vec<String> = metrics
                .borrow_and_update()
                .membership_config
                .nodes()
                .map(|(_, node)| node.peer_addr().to_owned())
                .chain(configured.iter().cloned())
                .collect();
            addrs.sort();
            addrs.dedup();
            if known.as_ref() != Some(&addrs) {
                let ips = resolve(&addrs).await;
                sender.send_replace(ips);
                known = Some(addrs);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    receiver
}

/// The IPs `addrs` (`host:port` each) stand for; one that does not resolve is logged and
/// left out.
async fn resolve(addrs: &[String]) -> HashSet<IpAddr> {
    let mut ips = HashSet::new();
    for addr in addrs {
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            ips.insert(addr.ip());
            continue;
        }
        match tokio::net::lookup_host(addr.as_str()).await {
            Ok(resolved) => ips.extend(resolved.map(|addr| addr.ip())),
            Err(err) => warn!(
                addr = ?addr,
                error = %err,
                "cannot resolve a member's peer address; its connections get no reserved slot"
            ),
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn admission(max_connections: usize, per_ip: usize, members: &[&str]) -> PeerAdmission {
        let members = members.iter().map(|text| ip(text)).collect();
        let (sender, receiver) = watch::channel(members);
        // The receiver keeps the last value after the sender is gone.
        drop(sender);
        PeerAdmission::new(
            PeerLimits {
                max_connections,
                max_handshakes_per_ip: per_ip,
            },
            receiver,
        )
    }

    #[test]
    fn a_stranger_gets_its_handshakes_per_address_and_more_once_authenticated() {
        let admission = admission(10, 2, &[]);
        let mut first = admission.admit(ip("10.0.0.9")).unwrap();
        let _second = admission.admit(ip("10.0.0.9")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.9")).unwrap_err(),
            PeerRefused::Handshakes {
                ip: ip("10.0.0.9"),
                open: 2
            }
        );
        // Another address has its own count.
        let _other = admission.admit(ip("10.0.0.8")).unwrap();
        first.handshake_done();
        let _third = admission.admit(ip("10.0.0.9")).unwrap();
    }

    #[test]
    fn members_get_reserved_slots_when_strangers_fill_the_general_ones() {
        let admission = admission(4, 2, &["10.0.0.1"]);
        let strangers: Vec<PeerSlot> = ["10.0.0.8", "10.0.0.8", "10.0.0.9", "10.0.0.9"]
            .into_iter()
            .map(|text| admission.admit(ip(text)).unwrap())
            .collect();
        assert_eq!(
            admission.admit(ip("10.0.0.7")).unwrap_err(),
            PeerRefused::Full { open: 4 }
        );
        // Members are not capped per address, and take the reserved slots.
        let members: Vec<PeerSlot> = (0..RESERVED_MEMBER_SLOTS)
            .map(|_| admission.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).unwrap_err(),
            PeerRefused::Full {
                open: 4 + RESERVED_MEMBER_SLOTS
            }
        );
        // A general slot given back goes to whoever comes next.
        drop(strangers);
        let _stranger = admission.admit(ip("10.0.0.7")).unwrap();
        drop(members);
        let counts = lock(&admission.counts);
        assert_eq!((counts.general, counts.reserved), (1, 0));
    }
}
