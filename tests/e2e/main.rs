//! The loopback end-to-end tests, one binary: real `mailslot-edge` and `mailslot`
//! processes, a real origin and real clients (curl, ssh, scp, redis-cli) on 127.0.0.1
//! with port 0. Each module is one theme; `common` holds the helpers they share.
//!
//! The harness is libtest-mimic's, so that a test this machine cannot run (OpenSSH or
//! redis missing, not root) is reported as ignored, with the reason, in the summary a
//! user sees: such a test returns `Err(Skip(why))`. Filters, `--list`, `--exact`,
//! `--test-threads` (and `RUST_TEST_THREADS`) work as with libtest; output is never
//! captured. Test names carry their module: `cargo test --test e2e tunnel::`.

// Test code: a failed unwrap is a failed test, and helpers shared between modules
// are `pub` inside this crate only.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

mod access;
mod acme;
mod cluster;
mod common;
mod config_cli;
mod config_powerloss;
mod cost;
mod datacap;
mod edge_pin;
mod edge_reload;
mod fleet;
mod fleet_page;
mod floods;
mod help;
mod metrics;
mod protocol;
mod push;
mod shield;
mod tunnel;
mod upgrade;

use common::Skip;
use libtest_mimic::{Completion, Trial};

/// What a test function returns: `()`, or `Result<(), Skip>` for one that may not be
/// able to run here.
trait Outcome {
    fn completion(self) -> Completion;
}

impl Outcome for () {
    fn completion(self) -> Completion {
        Completion::Completed
    }
}

impl Outcome for Result<(), Skip> {
    fn completion(self) -> Completion {
        match self {
            Ok(()) => Completion::Completed,
            Err(Skip(why)) => Completion::ignored_with(why),
        }
    }
}

/// One trial per `module::function`, named so; a panic fails it.
macro_rules! trials {
    ($($module:ident :: $test:ident),* $(,)?) => {
        vec![$(
            Trial::ignorable_test(concat!(stringify!($module), "::", stringify!($test)), || {
                Ok(Outcome::completion($module::$test()))
            }),
        )*]
    };
}

fn main() {
    let args = common::harness_args();
    let trials = trials![
        tunnel::bodies_of_every_size_arrive_intact_over_http1,
        datacap::past_the_cap_only_essential_rules_are_served_until_the_reset,
        datacap::a_device_without_a_clock_counts_its_days_by_the_edge,
        tunnel::http2_transport_carries_bodies_uploads_and_many_streams,
        tunnel::an_edge_on_one_worker_thread_serves_bodies_and_parallel_requests,
        tunnel::chunked_upload_reaches_the_origin_intact,
        tunnel::http2_over_tls_with_sni,
        tunnel::path_rules_status_rules_and_the_catch_all,
        tunnel::forwarding_headers_and_host_override,
        tunnel::dead_origin_gives_502_slow_origin_504_and_others_are_undisturbed,
        tunnel::idle_tunnel_streams_are_reused,
        tunnel::requests_take_turns_on_the_tunnel_connections,
        tunnel::concurrent_visitors_reuse_origin_connections,
        tunnel::many_concurrent_requests_over_one_connection,
        tunnel::websocket_upgrade_echoes,
        tunnel::tokens_for_other_hosts_forged_or_expired_are_refused,
        tunnel::a_hostname_belongs_to_one_tunnel_unless_the_token_is_shared,
        tunnel::the_connector_listens_on_nothing,
        tunnel::demo_works_as_the_readme_says,
        tunnel::sighup_reload_applies_new_rules_without_failing_requests,
        tunnel::sigterm_drains_and_exits_zero,
        tunnel::a_revoked_tunnel_is_refused_although_its_token_verifies,
        tunnel::https_and_unix_socket_origins_with_their_options,
        tunnel::a_hung_replica_costs_no_get_over_quic,
        tunnel::a_hung_replica_costs_no_get_over_http2,
        tunnel::a_silent_connector_is_closed_after_the_edges_idle_timeout,
        tunnel::fleet_status_lists_each_connection_with_its_round_trip_and_packet_size,
        tunnel::fleet_status_of_http2_connections_has_no_packet_size,
        tunnel::client_address_headers_from_visitors_never_reach_the_origin,
        tunnel::client_address_headers_from_a_trusted_proxy_are_kept_and_extended,
        tunnel::only_websocket_upgrades_reach_the_origin,
        tunnel::a_dead_origin_shows_the_visitor_no_address_or_error,
        tunnel::an_http10_origin_is_answered_in_http11,
        tunnel::origin_heads_interim_answers_chunks_and_bodies_until_close_pass_through,
        tunnel::a_tunnel_whose_connector_died_answers_502_within_seconds,
        tunnel::a_connector_restarted_after_a_crash_replaces_its_dead_connections_at_once,
        tunnel::quic_key_updates_keep_the_tunnel_working,
        access::access_stdio_carries_a_tcp_service_over_quic_https_and_fallback,
        access::access_tcp_listens_locally_and_carries_http,
        access::refused_clients_never_reach_the_device,
        access::public_tcp_port_routes_to_the_stream_rule,
        access::http_hostname_with_a_policy_needs_credentials,
        access::ssh_and_scp_through_the_tunnel,
        access::idle_interactive_sessions_stay_up,
        access::access_tcp_carries_redis_from_a_unix_socket,
        access::ssh_config_options_reach_the_client_as_data,
        access::secret_on_the_command_line_is_warned_about,
        shield::slowloris_and_slow_post_are_cut_off_before_the_device,
        shield::oversized_heads_and_bodies_and_smuggling_shapes_are_refused,
        shield::a_burst_from_one_address_is_rate_limited_while_another_is_served,
        shield::security_headers_are_added_per_hostname,
        shield::a_thousand_visitors_on_one_tunnel_do_not_starve_another,
        shield::a_request_waiting_for_a_busy_connections_stream_is_served,
        shield::an_empty_dns_label_does_not_bypass_an_access_policy,
        shield::path_spellings_do_not_bypass_path_rules_or_rate_limits,
        shield::a_rule_table_over_the_compiled_pattern_budget_is_refused_with_the_reason,
        shield::pipelined_requests_are_answered_in_order_on_one_connection,
        shield::smuggling_attempts_on_raw_sockets_never_reach_the_origin_as_requests,
        edge_reload::revoking_a_tunnel_closes_its_connections_and_keeps_it_out,
        edge_reload::reload_tightens_policies_and_refuses_bad_files,
        edge_reload::open_sessions_a_reload_no_longer_admits_are_cut,
        edge_reload::renewed_certificates_are_served_after_sighup_without_dropping_tunnels,
        fleet::a_device_enrols_registers_with_its_credential_and_is_remembered,
        fleet::an_expired_enrolment_key_or_a_bad_pattern_is_refused_with_the_reason,
        fleet::credentials_are_renewed_on_the_connection_and_at_registration,
        fleet::a_revoked_device_is_cut_at_once_and_never_registers_again,
        cluster::two_edges_share_one_fleet_through_redis,
        cluster::visitors_reach_every_device_through_any_edge,
        cluster::revocations_made_at_one_edge_hold_at_every_edge,
        cluster::a_connector_told_the_members_spreads_over_them_and_follows_their_changes,
        push::a_good_push_applies_without_dropping_a_download_in_flight,
        push::a_push_to_a_dead_edge_rolls_back_and_the_device_serves_again,
        push::a_device_killed_during_a_trial_rolls_back_after_it_starts_again,
        push::a_fleet_push_whose_canary_rolls_back_stops_there,
        push::a_device_whose_pin_differs_refuses_the_push,
        push::read_only_admin_credentials_cannot_push,
        protocol::a_newer_connector_is_told_to_wait_for_an_edge_update,
        protocol::an_older_connector_is_told_to_update_mailslot,
        config_cli::compile_check_show_round_trip,
        config_cli::recompiling_keeps_previous,
        config_cli::compile_errors,
        config_cli::bad_binaries,
        config_cli::run_keeps_a_last_known_good_time_written_at_most_daily,
        config_powerloss::killed_writers_never_leave_the_device_without_a_config,
        upgrade::killed_updates_always_leave_a_binary_that_starts,
        upgrade::a_device_is_upgraded_and_the_inventory_shows_the_new_version,
        upgrade::a_crash_looping_release_is_rolled_back_with_the_reason,
        upgrade::a_release_signed_with_another_key_is_refused_by_the_device,
        upgrade::a_metered_device_downloads_only_when_the_upgrade_allows_it,
        upgrade::a_partial_download_is_resumed_from_where_it_ended,
        upgrade::a_download_cut_short_is_resumed_on_the_next_fetch,
        upgrade::a_release_for_another_cpu_is_rolled_back_with_the_reason,
        upgrade::a_trial_that_reaches_no_edge_rolls_itself_back_at_its_deadline,
        floods::silent_sockets_do_not_lock_visitors_out,
        floods::connections_without_a_request_are_closed,
        floods::idle_http2_connections_are_closed_between_requests,
        floods::http2_visitors_are_held_to_max_headers,
        floods::ip_allow_sees_the_client_behind_a_trusted_proxy,
        floods::an_idle_flood_does_not_keep_a_connector_from_registering,
        floods::an_expired_token_closes_its_connection,
        floods::an_expired_token_closes_its_http2_connection,
        floods::the_admin_listener_requires_its_bearer_token,
        floods::a_killed_edge_restarted_on_its_port_is_used_again_at_once,
        floods::access_clients_are_capped_per_address_and_closed_when_idle,
        edge_pin::a_pinned_key_is_required_of_the_edge,
        fleet_page::the_fleet_page_needs_the_admin_token_in_a_real_browser,
        fleet_page::the_admin_api_takes_basic_auth_for_reading_only,
        fleet_page::devices_commands_talk_to_the_running_edge,
        fleet_page::real_boards_enrol_serve_their_hostnames_and_report_health,
        fleet_page::the_fleet_page_shows_online_and_offline_boards,
        cost::boards_report_what_their_tunnel_carried_and_cost_on_the_wire,
        metrics::requests_latency_and_bytes_are_counted_per_tunnel,
        help::every_mailslot_command_has_help,
        help::every_mailslot_edge_command_has_help,
        help::help_is_the_commands_own,
        acme::a_registered_name_gets_a_certificate_from_pebble_that_curl_trusts,
        acme::http01_is_answered_on_the_http_listener,
        acme::a_certificate_due_for_renewal_is_replaced_under_an_open_connection,
        acme::names_no_tunnel_serves_cause_no_order,
        acme::edges_of_a_cluster_answer_each_others_tls_alpn_challenges,
        acme::edges_of_a_cluster_answer_each_others_http01_challenges,
    ];
    libtest_mimic::run(&args, trials).exit();
}
