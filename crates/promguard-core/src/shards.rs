//! Which shard of monitors scrapes which node: rendezvous
//! (highest-random-weight) hashing over stable shard identities.
//!
//! Every node gets a weight from every shard and goes to the shard whose
//! weight is highest. A node's weights do not depend on the other shards, so
//! adding a shard moves only the nodes whose new highest weight is the new
//! shard's, and removing one moves only the nodes it had; no node moves
//! between shards that stay. Nothing is stored: the assignment is a pure
//! function of the shard ids and the node name, the same on every platform,
//! in every run and in every version of PromGuard (a snapshot test pins it).
//!
//! ```
//! use promguard_core::shards::{assign_all, Shards, ShardId};
//! use promguard_core::HostName;
//!
//! let shards = Shards::new(["a", "b", "c"].map(|s| ShardId::new(s).unwrap())).unwrap();
//! let nodes: Vec<HostName> = (1..=100)
//!     .map(|i| HostName::new(&format!("node-{i}")).unwrap())
//!     .collect();
//! let assignment = assign_all(&shards, &nodes);
//! assert_eq!(assignment.len(), 100);
//! let counted: usize = shards.iter().map(|s| assignment.nodes_of(s).count()).sum();
//! assert_eq!(counted, 100);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::names::{HostName, NameError};

/// The longest shard id, so that names derived from it (a monitor's host
/// name, a file_sd file name) stay within the host name's 63 characters.
const SHARD_ID_MAX: usize = 32;

/// The stable identity of a shard: lowercase letters, digits and '-',
/// starting and ending with a letter or digit, at most 32 characters.
///
/// The id, not a shard's position in the config, decides which nodes the
/// shard gets, so reordering shards moves nothing and renaming one moves
/// its nodes as removing it and adding another would.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(String);

impl ShardId {
    /// Checks `value` and wraps it.
    pub fn new(value: &str) -> Result<Self, NameError> {
        // A shard id follows the host name's rule, which lives in one place
        // (names.rs); only the length limit is its own.
        HostName::new(value).map_err(|e| NameError::invalid("shard id", value, e.reason))?;
        if value.len() > SHARD_ID_MAX {
            return Err(NameError::invalid("shard id", value, "is too long"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ShardId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for ShardId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ShardId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ShardId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The weight `shard` gives `node`: the first 8 bytes, read as a big-endian
/// `u64`, of the SHA-256 of
///
/// ```text
/// len(shard) as u32 big-endian || shard || len(node) as u32 big-endian || node
/// ```
///
/// where `shard` and `node` are the ASCII bytes of the id and the host name.
///
/// This is part of PromGuard's compatibility promise: changing it would move
/// nodes between monitors on upgrade. SHA-256 is used rather than std's
/// hashers because those are neither specified nor stable across Rust
/// versions, and `RandomState` differs per run. The lengths keep the
/// encoding unambiguous: without them ("ab", "c") and ("a", "bc") would
/// hash the same bytes.
pub fn weight(shard: &ShardId, node: &HostName) -> u64 {
    let mut hasher = Sha256::new();
    for part in [shard.as_str(), node.as_str()] {
        // Both are at most 63 bytes (validated), so the cast cannot truncate.
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The shard of `shards` that `node` belongs to: the one with the highest
/// [`weight`], the smaller id on a tie (so the answer never depends on the
/// order of `shards`); `None` when there is no shard.
///
/// The same id twice in `shards` is harmless here (both give the same
/// weight and either is the same answer); [`Shards`] refuses it because a
/// config that lists a shard twice is a mistake.
pub fn assign<'a>(shards: &'a [ShardId], node: &HostName) -> Option<&'a ShardId> {
    highest(shards.iter().map(|shard| (weight(shard, node), shard)))
}

/// The shard with the highest weight, the smaller id among equal weights.
fn highest<'a>(weighted: impl Iterator<Item = (u64, &'a ShardId)>) -> Option<&'a ShardId> {
    weighted
        .max_by(|(wa, a), (wb, b)| wa.cmp(wb).then_with(|| b.cmp(a)))
        .map(|(_, shard)| shard)
}

/// Why a set of shards was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardsError {
    /// No shard at all: no node would have a monitor.
    #[error("there must be at least one shard")]
    Empty,
    /// The same id twice: the two would be one shard, which the config
    /// did not mean.
    #[error("shard {0} is listed more than once")]
    Duplicate(ShardId),
}

/// A non-empty set of distinct shards, the precondition of [`assign_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards(Vec<ShardId>);

impl Shards {
    /// Checks that `shards` is not empty and names no shard twice; the
    /// order does not matter (they are kept sorted).
    pub fn new(shards: impl IntoIterator<Item = ShardId>) -> Result<Self, ShardsError> {
        let mut seen = BTreeSet::new();
        for shard in shards {
            if seen.contains(&shard) {
                return Err(ShardsError::Duplicate(shard));
            }
            seen.insert(shard);
        }
        if seen.is_empty() {
            return Err(ShardsError::Empty);
        }
        Ok(Self(seen.into_iter().collect()))
    }

    /// The shards, sorted by id.
    pub fn as_slice(&self) -> &[ShardId] {
        &self.0
    }

    /// The shards, sorted by id.
    pub fn iter(&self) -> std::slice::Iter<'_, ShardId> {
        self.0.iter()
    }

    /// How many shards there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `Shards` holds at least one shard. Here for clippy's
    /// `len_without_is_empty` and for callers that expect it.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The shard `node` belongs to (see [`assign`]); there always is one.
    pub fn assign(&self, node: &HostName) -> &ShardId {
        assign(&self.0, node).expect("Shards is never empty")
    }
}

impl<'a> IntoIterator for &'a Shards {
    type Item = &'a ShardId;
    type IntoIter = std::slice::Iter<'a, ShardId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Every node's shard, as [`assign_all`] computed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment(BTreeMap<HostName, ShardId>);

/// A node whose shard differs between two assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The node that moves.
    pub node: HostName,
    /// The shard that scraped it.
    pub from: ShardId,
    /// The shard that scrapes it now.
    pub to: ShardId,
}

/// Assigns every node of `nodes` to its shard of `shards` (see [`assign`]).
/// A node listed twice is assigned once.
pub fn assign_all<'a>(
    shards: &Shards,
    nodes: impl IntoIterator<Item = &'a HostName>,
) -> Assignment {
    Assignment(
        nodes
            .into_iter()
            .map(|node| (node.clone(), shards.assign(node).clone()))
            .collect(),
    )
}

impl Assignment {
    /// The shard of `node`, or `None` if the node was not assigned.
    pub fn shard_of(&self, node: &HostName) -> Option<&ShardId> {
        self.0.get(node)
    }

    /// The nodes of `shard`, sorted by name.
    pub fn nodes_of<'a>(&'a self, shard: &'a ShardId) -> impl Iterator<Item = &'a HostName> + 'a {
        self.0
            .iter()
            .filter(move |(_, s)| *s == shard)
            .map(|(node, _)| node)
    }

    /// Every node with its shard, sorted by node name.
    pub fn iter(&self) -> impl Iterator<Item = (&HostName, &ShardId)> {
        self.0.iter()
    }

    /// How many nodes are assigned.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no node is assigned.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nodes assigned in both `from` and `to` whose shard differs,
    /// sorted by node name. A node in only one of them is not a move: it
    /// was added or removed, and the plan's changes say so already.
    pub fn moves(from: &Assignment, to: &Assignment) -> Vec<Move> {
        from.0
            .iter()
            .filter_map(|(node, old)| {
                let new = to.0.get(node)?;
                (new != old).then(|| Move {
                    node: node.clone(),
                    from: old.clone(),
                    to: new.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use std::fmt::Write as _;

    fn shard(s: &str) -> ShardId {
        ShardId::new(s).unwrap()
    }

    fn host(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn shards(n: usize) -> Shards {
        Shards::new((1..=n).map(|i| shard(&format!("shard-{i}")))).unwrap()
    }

    fn nodes(n: usize) -> Vec<HostName> {
        (1..=n)
            .map(|i| host(&format!("promguard-node-{i}")))
            .collect()
    }

    /// The fraction of `nodes` assigned in both that moved.
    fn fraction_moved(moves: &[Move], nodes: usize) -> f64 {
        moves.len() as f64 / nodes as f64
    }

    #[test]
    fn shard_ids() {
        for good in ["a", "shard-1", "eu-west", &"a".repeat(32)] {
            assert!(ShardId::new(good).is_ok(), "{good:?}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", "a;b", &"a".repeat(33)] {
            let err = ShardId::new(bad).unwrap_err();
            assert_eq!(err.what, "shard id", "{bad:?}");
        }
        expect![[r#"invalid shard id "Eu": may contain only lowercase letters, digits and '-'"#]]
            .assert_eq(&ShardId::new("Eu").unwrap_err().to_string());
        expect![[r#"invalid shard id "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": is too long"#]]
            .assert_eq(&ShardId::new(&"a".repeat(33)).unwrap_err().to_string());
    }

    #[test]
    fn shard_ids_serialize_as_strings_and_validate_when_read() {
        let id = shard("eu-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""eu-1""#);
        assert_eq!(serde_json::from_str::<ShardId>(r#""eu-1""#).unwrap(), id);
        assert!(serde_json::from_str::<ShardId>(r#""EU""#).is_err());
        assert_eq!(format!("{id} {id:?}"), r#"eu-1 "eu-1""#);
    }

    /// Pins the hash: if this snapshot changes, upgrading PromGuard would
    /// move nodes between monitors. The figures were checked against a
    /// separate implementation of the encoding [`weight`] documents
    /// (Python's `hashlib.sha256` over `struct.pack('>I', len)` prefixes).
    #[test]
    fn weights_and_assignments_are_stable() {
        let mut out = String::new();
        for s in ["a", "b", "shard-1"] {
            for n in ["promguard-node-1", "promguard-node-2"] {
                writeln!(out, "{s} {n} {:016x}", weight(&shard(s), &host(n))).unwrap();
            }
        }
        let three = shards(3);
        for node in nodes(8) {
            writeln!(out, "{node} -> {}", three.assign(&node)).unwrap();
        }
        expect![[r#"
            a promguard-node-1 e4e3ac287e0fc60f
            a promguard-node-2 5302e95751326c9f
            b promguard-node-1 764441b5f2f710ed
            b promguard-node-2 4ef901bbac5942e4
            shard-1 promguard-node-1 539a1a737eaed2c7
            shard-1 promguard-node-2 0e7e0d3f11c3aa3e
            promguard-node-1 -> shard-2
            promguard-node-2 -> shard-3
            promguard-node-3 -> shard-1
            promguard-node-4 -> shard-1
            promguard-node-5 -> shard-2
            promguard-node-6 -> shard-1
            promguard-node-7 -> shard-3
            promguard-node-8 -> shard-3
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn the_encoding_is_unambiguous() {
        // Plain concatenation would give both pairs the bytes "abc".
        assert_ne!(
            weight(&shard("ab"), &host("c")),
            weight(&shard("a"), &host("bc"))
        );
    }

    #[test]
    fn ties_go_to_the_smaller_id_whatever_the_order() {
        let (a, b) = (shard("a"), shard("b"));
        assert_eq!(highest([(7, &a), (7, &b)].into_iter()), Some(&a));
        assert_eq!(highest([(7, &b), (7, &a)].into_iter()), Some(&a));
        assert_eq!(highest([(7, &a), (8, &b)].into_iter()), Some(&b));
    }

    #[test]
    fn the_order_of_shards_does_not_matter() {
        let forward = shards(5);
        let mut backward = forward.as_slice().to_vec();
        backward.reverse();
        for node in nodes(200) {
            assert_eq!(assign(&backward, &node), Some(forward.assign(&node)));
        }
    }

    #[test]
    fn no_shard_assigns_nothing() {
        assert_eq!(assign(&[], &host("promguard-node-1")), None);
        assert_eq!(Shards::new([]), Err(ShardsError::Empty));
    }

    #[test]
    fn a_shard_listed_twice_is_refused() {
        let err = Shards::new([shard("a"), shard("b"), shard("a")]).unwrap_err();
        assert_eq!(err, ShardsError::Duplicate(shard("a")));
        expect!["shard a is listed more than once"].assert_eq(&err.to_string());
    }

    #[test]
    fn a_single_shard_gets_every_node() {
        let one = shards(1);
        let nodes = nodes(1_000);
        let assignment = assign_all(&one, &nodes);
        assert_eq!(assignment.nodes_of(&one.as_slice()[0]).count(), 1_000);
    }

    #[test]
    fn three_shards_share_10_000_nodes_about_equally() {
        let three = shards(3);
        let nodes = nodes(10_000);
        let assignment = assign_all(&three, &nodes);
        for shard in &three {
            let share = assignment.nodes_of(shard).count() as f64 / 10_000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.03, "{shard}: {share}");
        }
    }

    #[test]
    fn adding_a_fourth_shard_moves_about_a_quarter_and_only_to_it() {
        let nodes = nodes(10_000);
        let before = assign_all(&shards(3), &nodes);
        let four = shards(4);
        let new = shard("shard-4");
        let after = assign_all(&four, &nodes);
        let moves = Assignment::moves(&before, &after);
        let fraction = fraction_moved(&moves, nodes.len());
        assert!((0.22..=0.28).contains(&fraction), "{fraction}");
        assert!(
            moves.iter().all(|m| m.to == new),
            "a node moved between old shards"
        );
        // Every node the new shard has came from an old one.
        assert_eq!(after.nodes_of(&new).count(), moves.len());
    }

    #[test]
    fn removing_a_shard_moves_exactly_its_nodes() {
        let nodes = nodes(10_000);
        let four = shards(4);
        let before = assign_all(&four, &nodes);
        let gone = shard("shard-2");
        let remaining = Shards::new(four.iter().filter(|s| **s != gone).cloned()).unwrap();
        let after = assign_all(&remaining, &nodes);
        let moves = Assignment::moves(&before, &after);
        let its_nodes: Vec<&HostName> = before.nodes_of(&gone).collect();
        let moved: Vec<&HostName> = moves.iter().map(|m| &m.node).collect();
        assert_eq!(moved, its_nodes);
        for m in &moves {
            assert_eq!(m.from, gone);
            assert!(remaining.as_slice().contains(&m.to));
        }
    }

    #[test]
    fn moves_leave_out_added_and_removed_nodes() {
        let one = shards(1);
        let two = shards(2);
        let before = assign_all(&one, &nodes(100));
        let after = assign_all(&two, &nodes(200));
        let moves = Assignment::moves(&before, &after);
        assert!(moves.iter().all(|m| before.shard_of(&m.node).is_some()));
        assert_eq!(
            moves.len(),
            nodes(100)
                .iter()
                .filter(|n| after.shard_of(n) != before.shard_of(n))
                .count()
        );
    }
}
