//! Scenarios in network namespaces: a device behind a carrier-like NAT with a closed
//! firewall, two edges and a visitor (see `tests/netns`). Real processes throughout:
//! `mailslot run` and a Python origin in the device namespace, `mailslot-edge serve` in
//! each edge namespace, curl and nmap as visitors. Needs root.
//!
//! The harness is libtest-mimic's, so that a scenario this machine cannot run (not root,
//! a tool missing) is reported as ignored, with the reason, in the summary a user sees;
//! filters, `--ignored`, `--test-threads` (and `RUST_TEST_THREADS`) work as with
//! libtest. Output is never captured: `--nocapture` is accepted and changes nothing.
//!
//! The tests assert generous bounds and print what they measured; the ignored `bench`
//! test repeats the timing scenarios and prints the figures for the README:
//! `cargo test --release --test scenarios -- --ignored bench --nocapture`. The ignored
//! `idle_traffic*` tests measure what an idle device costs in bytes at the NAT (see
//! `idle.rs`).

// Test code: a failed unwrap is a failed test, and helpers shared between modules
// are `pub` inside this crate only.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

#[path = "../e2e/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;
#[path = "../netns/mod.rs"]
mod netns;

mod bench;
mod cluster;
mod crash;
mod dns;
mod drain;
mod failover;
mod fleet;
mod idle;
mod nat;
mod natlife;
mod scene;
mod storage;

use libtest_mimic::{Completion, Trial};

/// What a scenario needs besides root and the namespace tools.
#[derive(Clone, Copy)]
enum Need {
    /// Nothing more.
    Namespaces,
    /// nmap, the port scanner.
    Nmap,
    /// The NFQUEUE delay program's python module.
    NetfilterQueue,
    /// redis-server (Debian's `redis-server`).
    Redis,
}

impl Need {
    /// Why this machine cannot run the scenario, or `None` when it can.
    fn missing(self) -> Option<String> {
        netns::missing().or_else(|| match self {
            Need::Namespaces => None,
            Need::Nmap => netns::missing_tools(&["nmap"]),
            Need::NetfilterQueue => netns::netfilterqueue_missing(),
            Need::Redis => netns::missing_tools(&["redis-server"]),
        })
    }
}

/// A scenario as a trial: ignored, with the reason, where the machine cannot run it
/// (checked when it is about to run, so `--list` stays quick); a panic fails it.
fn scenario(name: &'static str, need: Need, run: fn()) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Some(why) = need.missing() {
            return Ok(Completion::ignored_with(why));
        }
        run();
        Ok(Completion::Completed)
    })
}

fn main() {
    use Need::*;
    let args = common::harness_args();
    let trials = vec![
        scenario(
            "port_scans_find_nothing_open_while_the_service_is_reachable",
            Nmap,
            nat::port_scans_find_nothing_open_while_the_service_is_reachable,
        ),
        scenario(
            "udp_blocked_falls_back_to_http2_and_returns_to_quic",
            Namespaces,
            nat::udp_blocked_falls_back_to_http2_and_returns_to_quic,
        ),
        scenario(
            "requests_succeed_with_loss_and_delay_at_the_nat",
            NetfilterQueue,
            nat::requests_succeed_with_loss_and_delay_at_the_nat,
        ),
        scenario(
            "quic_survives_nat_rebinding",
            Namespaces,
            nat::quic_survives_nat_rebinding,
        ),
        scenario(
            "an_idle_device_is_served_at_once_after_a_nat_rebinding",
            Namespaces,
            nat::an_idle_device_is_served_at_once_after_a_nat_rebinding,
        ),
        scenario(
            "a_killed_edge_gets_back_the_keeper_and_its_siblings",
            Namespaces,
            failover::a_killed_edge_gets_back_the_keeper_and_its_siblings,
        ),
        scenario(
            "a_jumbo_frame_lan_behind_a_narrow_uplink_still_carries_bulk_downloads",
            Namespaces,
            nat::a_jumbo_frame_lan_behind_a_narrow_uplink_still_carries_bulk_downloads,
        ),
        scenario(
            "serves_again_after_minutes_of_outage",
            Namespaces,
            nat::serves_again_after_minutes_of_outage,
        ),
        scenario(
            "boots_without_a_network_and_connects_once_it_appears",
            Namespaces,
            nat::boots_without_a_network_and_connects_once_it_appears,
        ),
        scenario(
            "killing_one_edge_leaves_the_other_serving",
            Namespaces,
            failover::killing_one_edge_leaves_the_other_serving,
        ),
        scenario(
            "a_restarted_edge_serves_again_within_2s",
            Namespaces,
            failover::a_restarted_edge_serves_again_within_2s,
        ),
        scenario(
            "a_killed_replica_costs_no_get_and_replays_no_post_quic",
            Namespaces,
            failover::a_killed_replica_costs_no_get_and_replays_no_post_quic,
        ),
        scenario(
            "a_killed_replica_costs_no_get_and_replays_no_post_http2",
            Namespaces,
            failover::a_killed_replica_costs_no_get_and_replays_no_post_http2,
        ),
        scenario(
            "slots_of_a_dead_edge_serve_through_the_live_one_until_it_returns",
            Namespaces,
            failover::slots_of_a_dead_edge_serve_through_the_live_one_until_it_returns,
        ),
        scenario(
            "dns_failure_keeps_the_last_good_addresses",
            Namespaces,
            dns::dns_failure_keeps_the_last_good_addresses,
        ),
        scenario(
            "sigterm_lets_a_download_finish_and_exits_0",
            Namespaces,
            drain::sigterm_lets_a_download_finish_and_exits_0,
        ),
        scenario(
            "a_sigkilled_edge_restarted_serves_again_by_the_keepers_next_ping",
            Namespaces,
            crash::a_sigkilled_edge_restarted_serves_again_by_the_keepers_next_ping,
        ),
        scenario(
            "a_sigkilled_connector_restarted_supersedes_its_dead_connections",
            Namespaces,
            crash::a_sigkilled_connector_restarted_supersedes_its_dead_connections,
        ),
        scenario(
            "a_sigkilled_connector_not_restarted_gets_visitors_a_quick_502",
            Namespaces,
            crash::a_sigkilled_connector_not_restarted_gets_visitors_a_quick_502,
        ),
        scenario(
            "metered_a_nat_rebinding_is_survived_by_the_next_keepalive",
            Namespaces,
            nat::a_metered_device_reconnects_after_a_nat_rebinding_by_its_next_keepalive,
        ),
        scenario(
            "metered_serves_again_after_an_outage",
            Namespaces,
            nat::a_metered_device_serves_again_after_an_outage,
        ),
        scenario(
            "metered_moves_to_the_live_edge_and_back",
            Namespaces,
            failover::a_metered_device_moves_to_the_live_edge_and_back,
        ),
        scenario(
            "metered_a_sigkilled_edge_restarted_serves_again_at_once",
            Namespaces,
            crash::a_sigkilled_edge_restarted_serves_a_metered_device_again_at_once,
        ),
        scenario(
            "twenty_boards_from_one_golden_image",
            Namespaces,
            fleet::twenty_boards_from_one_golden_image,
        ),
        scenario(
            "three_edges_one_redis_thirty_boards",
            Redis,
            cluster::three_edges_one_redis_thirty_boards,
        ),
        scenario(
            "thirty_boards_bootstrap_from_one_edge",
            Redis,
            cluster::thirty_boards_bootstrap_from_one_edge,
        ),
        scenario(
            "a_metered_device_learns_the_nats_mapping_lifetime",
            Namespaces,
            natlife::a_metered_device_learns_the_nats_mapping_lifetime,
        ),
        scenario("bench", Namespaces, bench::bench).with_ignored_flag(true),
        scenario("idle_traffic", Namespaces, idle::idle_traffic).with_ignored_flag(true),
        scenario(
            "idle_traffic_50ms_rtt",
            NetfilterQueue,
            idle::idle_traffic_50ms_rtt,
        )
        .with_ignored_flag(true),
        scenario(
            "idle_traffic_one_connection",
            Namespaces,
            idle::idle_traffic_one_connection,
        )
        .with_ignored_flag(true),
        scenario("idle_traffic_http2", Namespaces, idle::idle_traffic_http2)
            .with_ignored_flag(true),
        scenario(
            "idle_traffic_http2_one_connection",
            Namespaces,
            idle::idle_traffic_http2_one_connection,
        )
        .with_ignored_flag(true),
        scenario(
            "connector_writes_nothing_to_storage",
            Namespaces,
            storage::connector_writes_nothing_to_storage,
        ),
        scenario(
            "idle_traffic_metered",
            Namespaces,
            idle::idle_traffic_metered,
        )
        .with_ignored_flag(true),
        scenario(
            "idle_traffic_metered_learnt",
            Namespaces,
            idle::idle_traffic_metered_learnt,
        )
        .with_ignored_flag(true),
        scenario(
            "idle_traffic_metered_50ms_rtt",
            NetfilterQueue,
            idle::idle_traffic_metered_50ms_rtt,
        )
        .with_ignored_flag(true),
    ];
    libtest_mimic::run(&args, trials).exit();
}
