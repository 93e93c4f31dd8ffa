//! A bounded cache of connection owners.

use super::Owner;
use std::collections::HashMap;
use std::sync::Mutex;

/// Two generations of at most `capacity / 2` entries each: inserts go to the young one, and when
/// it is full the old one is dropped whole. Lookups promote entries from the old generation, so
/// connections in use stay while idle ones age out, at O(1) per operation without an LRU list.
#[derive(Debug)]
pub(super) struct OwnerCache {
    half: usize,
    inner: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<String, Owner>,
    old: HashMap<String, Owner>,
}

impl OwnerCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            half: capacity.div_ceil(2).max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps stay consistent whatever panicked: at worst an entry is missing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: &str) -> Option<Owner> {
        let mut g = self.lock();
        if let Some(owner) = g.young.get(id) {
            return Some(owner.clone());
        }
        let owner = g.old.remove(id)?;
        Self::put(&mut g, self.half, id.to_string(), owner.clone());
        Some(owner)
    }

    pub(super) fn insert(&self, id: String, owner: Owner) {
        let mut g = self.lock();
        g.old.remove(&id);
        Self::put(&mut g, self.half, id, owner);
    }

    pub(super) fn remove(&self, id: &str) {
        let mut g = self.lock();
        g.young.remove(id);
        g.old.remove(id);
    }

    fn put(g: &mut Generations, half: usize, id: String, owner: Owner) {
        if g.young.len() >= half && !g.young.contains_key(&id) {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(id, owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u32) -> Owner {
        Owner {
            host_id: format!("h{n}"),
            incarnation: "i".into(),
            endpoint: "http://h".into(),
        }
    }

    #[test]
    fn bounded_and_keeps_used_entries() {
        let cache = OwnerCache::new(4);
        for n in 0..4 {
            cache.insert(format!("c{n}"), owner(n));
        }
        // c0 and c1 aged into the old generation; using c0 promotes it.
        assert_eq!(cache.get("c0"), Some(owner(0)));
        for n in 4..6 {
            cache.insert(format!("c{n}"), owner(n));
        }
        assert_eq!(cache.get("c1"), None, "idle entries age out");
        assert_eq!(cache.get("c5"), Some(owner(5)));
        assert_eq!(cache.get("c0"), Some(owner(0)), "the used entry stayed");
        let g = cache.lock();
        assert!(g.young.len() + g.old.len() <= 4);
        drop(g);
        cache.remove("c5");
        assert_eq!(cache.get("c5"), None);
    }
}
