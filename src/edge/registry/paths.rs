//! The compiled path patterns of rule tables: bounded in size, and shared by every
//! connection (replica or not) that registers the same patterns.
//!
//! Each pattern compiles under the smallest of [`SIZE_TIERS`] it fits in; that tier
//! plus [`OVERHEAD`] is what it costs (its *charge*): `size_limit` caps each compiled
//! program, `dfa_size_limit` the lazy DFA cache each matching thread keeps for it, at
//! the same figure, and the overhead covers the regex's fixed structures (measured:
//! 6 KB live for `^/admin`, 150 KB for `^/x/[a-z]{3000}`, charged 12 and 264 KiB). Patterns are ASCII-only unless they ask for Unicode with `(?u)`: paths are
//! ASCII once normalised ([`crate::edge::path`]), and Unicode classes are what makes
//! small patterns big.
//!
//! A table is looked up by the SHA-256 of its patterns: the 64 connections of a tunnel
//! with one config hold one table. The cache holds tables weakly: a table goes when
//! its last connection does. Budgets: [`TUNNEL_BUDGET`] for the distinct tables of one
//! tunnel (checked by the registry), [`EDGE_BUDGET`] for all tables held on the edge.
//!
//! Memory bound, with `T` tunnels connected and `W` worker threads: the compiled
//! patterns take at most `C = min(EDGE_BUDGET, T × TUNNEL_BUDGET)` (512 MiB; 4 MiB a
//! tunnel), whatever connectors send, as each charge is at least what its pattern
//! holds. Each worker thread that matches a pattern keeps scratch for it: a lazy DFA
//! cache of at most its tier and a PikeVM cache that grows with the program, not with
//! the path (measured: at most its charge, after 8 KB paths); the bounded backtracker,
//! whose scratch grows with the path, is not built in (Cargo.toml). So rule tables
//! take at most about `(1 + 2 × W) × C`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use regex::bytes::{Regex, RegexBuilder};

use crate::wire::RuleInfo;

/// Compiled-size limits a path pattern is tried under, smallest first; the first that
/// fits is its charge.
pub(crate) const SIZE_TIERS: [usize; 4] = [4 << 10, 16 << 10, 64 << 10, 256 << 10];
/// What a pattern costs besides its tier: the regex's fixed structures.
pub(crate) const OVERHEAD: usize = 8 << 10;
/// Most charge of the distinct rule tables one tunnel's connections hold: two
/// configs of 64 small patterns each (a rollout), or 15 of the largest patterns.
pub(crate) const TUNNEL_BUDGET: usize = 4 << 20;
/// Most charge of all rule tables held on the edge.
pub(crate) const EDGE_BUDGET: usize = 512 << 20;

/// One rule table's compiled path patterns, by rule index.
pub(crate) struct PathTable {
    key: [u8; 32],
    paths: Vec<Option<Regex>>,
    /// Sum of the patterns' charges (tier + [`OVERHEAD`]), bytes.
    charge: usize,
}

impl PathTable {
    /// Rule `i`'s pattern, if it has one.
    pub(crate) fn get(&self, i: usize) -> Option<&Regex> {
        self.paths.get(i).and_then(Option::as_ref)
    }

    /// What the table costs against the budgets, bytes.
    pub(crate) fn charge(&self) -> usize {
        self.charge
    }
}

struct Cache {
    tables: HashMap<[u8; 32], Weak<PathTable>>,
    /// Sum of the charges of the tables alive.
    charged: usize,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(|| Cache {
        tables: HashMap::new(),
        charged: 0,
    });
    f(cache)
}

impl Drop for PathTable {
    fn drop(&mut self) {
        let me: *const PathTable = self;
        with_cache(|c| {
            c.charged = c.charged.saturating_sub(self.charge);
            // A table compiled again since may hold the key by now: remove only our own.
            if c.tables.get(&self.key).is_some_and(|w| w.as_ptr() == me) {
                c.tables.remove(&self.key);
            }
        });
    }
}

/// The compiled patterns of `infos`: the table already held for the same patterns, or
/// a new one within the budgets.
pub(super) fn table(infos: &[RuleInfo]) -> Result<Arc<PathTable>, String> {
    let key = digest(infos);
    if let Some(t) = with_cache(|c| c.tables.get(&key).and_then(Weak::upgrade)) {
        return Ok(t);
    }
    // Compiled outside the lock: it may take a while, and other tables wait on it.
    let mut paths = Vec::with_capacity(infos.len());
    let mut charge = 0;
    for (i, r) in infos.iter().enumerate() {
        match &r.path {
            None => paths.push(None),
            Some(p) => {
                let (re, tier) = compile(p).map_err(|e| format!("ingress[{i}] path {p:?}: {e}"))?;
                charge += tier + OVERHEAD;
                paths.push(Some(re));
            }
        }
    }
    if charge > TUNNEL_BUDGET {
        return Err(too_big(charge));
    }
    with_cache(|c| {
        // Compiled meanwhile by another connection: that one is shared.
        if let Some(t) = c.tables.get(&key).and_then(Weak::upgrade) {
            return Ok(t);
        }
        if c.charged + charge > EDGE_BUDGET {
            return Err(format!(
                "this edge holds its most compiled path patterns ({} MiB); try another edge",
                EDGE_BUDGET >> 20
            ));
        }
        // Made under the lock and charged at once, so its Drop (which takes the lock)
        // always undoes exactly this; no PathTable is ever dropped while it is held.
        let t = Arc::new(PathTable { key, paths, charge });
        c.charged += charge;
        c.tables.insert(key, Arc::downgrade(&t));
        Ok(t)
    })
}

/// The refusal for path patterns over [`TUNNEL_BUDGET`] (one table, or the distinct
/// tables of one tunnel's connections together).
pub(super) fn too_big(charge: usize) -> String {
    format!(
        "the path patterns of this tunnel's rule tables need {} KiB compiled, over this \
         edge's budget of {} KiB per tunnel (connections with identical patterns share \
         one table; different ones each count): use fewer or simpler path patterns (no \
         large repetitions such as {{1000}}, no Unicode classes)",
        charge >> 10,
        TUNNEL_BUDGET >> 10
    )
}

/// Compiles one pattern under the smallest tier it fits in.
fn compile(pattern: &str) -> Result<(Regex, usize), String> {
    for tier in SIZE_TIERS {
        match RegexBuilder::new(pattern)
            .unicode(false)
            .size_limit(tier)
            .dfa_size_limit(tier)
            .build()
        {
            Ok(re) => return Ok((re, tier)),
            Err(regex::Error::CompiledTooBig(_)) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "compiles to more than {} KiB (the most one pattern may take)",
        SIZE_TIERS.last().map_or(0, |t| t >> 10)
    ))
}

/// SHA-256 of the table's path patterns in order (absent ones included).
fn digest(infos: &[RuleInfo]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in infos {
        match &r.path {
            None => ctx.update(&[0]),
            Some(p) => {
                ctx.update(&[1]);
                ctx.update(&(p.len() as u64).to_le_bytes());
                ctx.update(p.as_bytes());
            }
        }
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RuleAction;

    fn infos(paths: &[&str]) -> Vec<RuleInfo> {
        let mut v: Vec<RuleInfo> = paths
            .iter()
            .map(|p| RuleInfo {
                hostname: None,
                path: Some(p.to_string()),
                action: RuleAction::Http,
                host_header: None,
            })
            .collect();
        v.push(RuleInfo {
            hostname: None,
            path: None,
            action: RuleAction::Status(404),
            host_header: None,
        });
        v
    }

    #[test]
    fn identical_patterns_share_one_table_until_the_last_goes() {
        let rules = infos(&["^/share-test/[a-z]+", "^/b"]);
        let first = table(&rules).unwrap();
        let all: Vec<_> = (0..64).map(|_| table(&rules).unwrap()).collect();
        assert!(all.iter().all(|t| Arc::ptr_eq(t, &first)));
        assert_eq!(Arc::strong_count(&first), 65);
        assert_eq!(first.charge(), 2 * (SIZE_TIERS[0] + OVERHEAD));
        assert!(first.get(0).unwrap().is_match(b"/share-test/abc"));
        assert!(first.get(2).is_none());
        let other = table(&infos(&["^/share-test/[a-z]+", "^/c"])).unwrap();
        assert!(!Arc::ptr_eq(&other, &first));
        let weak = Arc::downgrade(&first);
        drop(all);
        drop(first);
        assert!(
            weak.upgrade().is_none(),
            "the table outlived its connections"
        );
        let again = table(&rules).unwrap();
        assert!(again.get(1).unwrap().is_match(b"/b"));
    }

    #[test]
    fn oversized_tables_are_refused_with_the_reason() {
        let big = "^/[a-z]{1000}";
        assert!(table(&infos(&[big; 15])).is_ok());
        let e = table(&infos(&[big; 16])).err().unwrap();
        assert!(e.contains("need 4224 KiB"), "{e}");
        assert!(e.contains("budget of 4096 KiB per tunnel"), "{e}");
        let e = table(&infos(&["[a-z]{100000}"])).err().unwrap();
        assert!(e.contains("more than 256 KiB"), "{e}");
        let e = table(&infos(&["(unclosed"])).err().unwrap();
        assert!(e.contains("ingress[0] path"), "{e}");
    }
}
