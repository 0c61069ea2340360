//! The rules of a group of actions (docs/architecture.md, "Actions in
//! groups"): which commands of a group go through it together, and rule
//! 10's guard for several drains of one backend decided at once.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Which items a group takes: the first of each key, for every kind of key
/// (a target, a transaction id, a server). A later item with a key already
/// taken is left out (`false`) — it is handled on its own after the group,
/// so commands for one server are never in one group and a transaction id
/// is never recorded twice at once.
pub fn first_of_each<K: Eq + Hash>(keys: impl IntoIterator<Item = Vec<K>>) -> Vec<bool> {
    let mut seen: HashSet<K> = HashSet::new();
    keys.into_iter()
        .map(|item_keys| {
            if item_keys.iter().any(|k| seen.contains(k)) {
                return false;
            }
            seen.extend(item_keys);
            true
        })
        .collect()
}

/// One action of a group as rule 10's guard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardItem {
    pub backend_id: i64,
    /// The guard applies: a `drain` or `maint` without `force` of a server
    /// that is `ready` now.
    pub applies: bool,
}

/// Rule 10 for a group, in order: an item the guard applies to goes when
/// its backend keeps a ready server besides it and besides every item of
/// the group already let go in that backend (`ready` counts every live
/// ready server of a backend, the items' own included). `false`: the item
/// does not go with the group (it is handled on its own afterwards, when
/// the group's outcomes are committed, and rejected then if the backend
/// would be left with no ready server).
pub fn guard_admits(items: &[GuardItem], ready: &HashMap<i64, i64>) -> Vec<bool> {
    let mut going: HashMap<i64, i64> = HashMap::new();
    items
        .iter()
        .map(|item| {
            if !item.applies {
                return true;
            }
            let ready = ready.get(&item.backend_id).copied().unwrap_or(0);
            let taken = going.entry(item.backend_id).or_insert(0);
            // Ready besides this server and those already going.
            if ready - 1 - *taken > 0 {
                *taken += 1;
                true
            } else {
                false
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_key_goes_and_later_ones_wait() {
        let keys = vec![
            vec!["server 1", "txn a"],
            vec!["server 2", "txn b"],
            vec!["server 1", "txn c"],
            vec!["server 3", "txn a"],
            vec!["server 4", "txn d"],
        ];
        assert_eq!(first_of_each(keys), vec![true, true, false, false, true]);
    }

    #[test]
    fn a_left_out_item_takes_no_key() {
        // Item 2 is left out for its server; its transaction id stays free.
        let keys = vec![vec![1, 10], vec![1, 11], vec![2, 11]];
        assert_eq!(first_of_each(keys), vec![true, false, true]);
    }

    fn item(backend_id: i64, applies: bool) -> GuardItem {
        GuardItem {
            backend_id,
            applies,
        }
    }

    #[test]
    fn drains_of_one_backend_count_each_other() {
        // Backend 1 has 3 ready servers: two of them may go, not the third.
        let ready = HashMap::from([(1, 3), (2, 2)]);
        let items = [item(1, true), item(1, true), item(2, true), item(1, true)];
        assert_eq!(guard_admits(&items, &ready), vec![true, true, true, false]);
    }

    #[test]
    fn the_last_ready_server_never_goes() {
        let ready = HashMap::from([(1, 1)]);
        assert_eq!(guard_admits(&[item(1, true)], &ready), vec![false]);
        assert_eq!(guard_admits(&[item(9, true)], &ready), vec![false]);
    }

    #[test]
    fn items_the_guard_does_not_apply_to_always_go_and_take_nothing() {
        let ready = HashMap::from([(1, 2)]);
        let items = [item(1, false), item(1, false), item(1, true), item(1, true)];
        assert_eq!(guard_admits(&items, &ready), vec![true, true, true, false]);
    }
}
