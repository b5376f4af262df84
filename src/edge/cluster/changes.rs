//! Following what other edges change: a subscription to [`CHANGED`], where every edge
//! publishes the id of each device it enrols or revokes. Each id read is looked up in
//! the store and learned by the inventory (a revoked device's connections here are cut
//! at once: pub/sub delivers within milliseconds, well inside the 2 s edges promise).
//!
//! Pub/sub keeps nothing for a subscriber that is away, so after every (re)subscription
//! the inventory reads every record again ([`Inventory::resync`]): what changed while
//! this edge was cut off from Redis is learned then. A subscription that stops
//! answering a ping within [`PING_TIMEOUT`] is dropped and made again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::store::CHANGED;
use crate::edge::fleet::Inventory;

/// How often a quiet subscription is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for a ping's answer, and for a new subscription.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before subscribing again, doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Most ids read from one burst of messages before they are looked up together.
const MAX_BATCH: usize = 256;

/// Follows the changes published in Redis until the task is dropped.
pub(crate) async fn follow(client: redis::Client, shown: String, inventory: Arc<Inventory>) {
    let mut wait = RETRY_MIN;
    let mut lost_logged = false;
    loop {
        match subscribe(&client, CHANGED).await {
            Ok(pubsub) => {
                wait = RETRY_MIN;
                lost_logged = false;
                match inventory.resync().await {
                    Ok(n) => log::info!(
                        "cluster: following fleet changes on redis {shown} ({n} devices)"
                    ),
                    Err(e) => {
                        log::warn!("cluster: records not read again: {e}");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                let why = serve(pubsub, &inventory).await;
                log::warn!(
                    "cluster: lost redis {shown} ({why}): serving what this edge holds; \
                     enrolment and revocation wait for it"
                );
            }
            Err(e) if !lost_logged => {
                lost_logged = true;
                log::warn!("cluster: cannot subscribe on redis {shown}: {e}; trying again");
            }
            Err(_) => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// A subscription to `channel`, made within [`PING_TIMEOUT`].
pub(super) async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, String> {
    let sub = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    tokio::time::timeout(PING_TIMEOUT, sub)
        .await
        .map_err(|_| format!("no answer within {}s", PING_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())
}

/// Reads changes until the subscription ends; why it ended.
async fn serve(pubsub: redis::aio::PubSub, inventory: &Inventory) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "connection closed".into();
                };
                let mut ids = vec![msg.get_payload::<String>().unwrap_or_default()];
                // Whatever else has arrived already goes in the same lookup.
                while ids.len() < MAX_BATCH {
                    match futures_util::FutureExt::now_or_never(stream.next()) {
                        Some(Some(m)) => ids.push(m.get_payload::<String>().unwrap_or_default()),
                        Some(None) => return "connection closed".into(),
                        None => break,
                    }
                }
                ids.retain(|id| !id.is_empty());
                if let Err(e) = inventory.refresh(ids).await {
                    // The subscription may outlive Redis's answers: read all again.
                    return format!("changes not read: {e}");
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return format!("no answer to a ping within {}s", PING_TIMEOUT.as_secs()),
                }
            }
        }
    }
}
