//! Connections to the shared Redis: blocking ones for the fleet store (its calls run on
//! blocking threads), each call bounded in time, reconnecting by themselves.
//!
//! A call takes an idle connection or opens one ([`CONNECT_TIMEOUT`]), sends its
//! commands with read and write timeouts ([`CALL_TIMEOUT`]) and gives the connection
//! back when the call succeeded. A failed call drops its connection: the next call opens
//! a new one, so an edge follows a Redis that restarted with no restart of its own.

use std::sync::Mutex;
use std::time::Duration;

use crate::edge::config::RedisAddr;
use crate::edge::fleet::StoreError;
use crate::util::lock;

/// Longest wait for a new connection to Redis.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one read or write of a call.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most idle connections kept (one per blocking thread calling at once; more are
/// opened when needed and closed after).
const MAX_IDLE: usize = 8;

/// The shared Redis, as the store's blocking calls reach it.
pub(crate) struct Redis {
    client: redis::Client,
    /// The address as logs show it (password masked).
    shown: String,
    /// Idle connections, at most [`MAX_IDLE`].
    idle: Mutex<Vec<redis::Connection>>,
}

impl Redis {
    /// A client for `addr`; connects on the first call.
    pub(crate) fn new(addr: &RedisAddr) -> Result<Redis, String> {
        let client = redis::Client::open(addr.url()).map_err(|e| format!("redis {addr}: {e}"))?;
        Ok(Redis {
            client,
            shown: addr.to_string(),
            idle: Mutex::default(),
        })
    }

    /// The async client (pub/sub and presence use it).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The address as logs show it.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        c.set_read_timeout(Some(CALL_TIMEOUT))?;
        c.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(c)
    }

    /// Runs `f` on a connection; the error says that Redis failed and why.
    ///
    /// A connection that failed for its link (Redis restarted, the network dropped it)
    /// empties the idle list, whose connections went with it; when it had been idle, `f`
    /// runs once more on a new connection (every call of the store may run twice: a
    /// transaction whose `EXEC` never arrived did nothing, and the scripts are
    /// idempotent).
    pub(crate) fn call<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let idle = lock(&self.idle).pop();
        let was_idle = idle.is_some();
        let mut con = match idle {
            Some(c) => c,
            None => self.connect().map_err(|e| self.failed(&e))?,
        };
        let out = match f(&mut con) {
            Ok(out) => out,
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                lock(&self.idle).clear();
                if !was_idle || e.is_timeout() {
                    return Err(self.failed(&e));
                }
                con = self.connect().map_err(|e| self.failed(&e))?;
                f(&mut con).map_err(|e| self.failed(&e))?
            }
            Err(e) => return Err(self.failed(&e)),
        };
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(con);
        }
        Ok(out)
    }

    /// Why a call failed, for the operator: the address and Redis's reason.
    pub(crate) fn failed(&self, e: &redis::RedisError) -> StoreError {
        let why = if e.is_timeout() {
            format!("no answer within {}s", CALL_TIMEOUT.as_secs())
        } else {
            e.to_string()
        };
        StoreError::Engine(format!(
            "redis {} unreachable or failing: {why}",
            self.shown
        ))
    }
}
