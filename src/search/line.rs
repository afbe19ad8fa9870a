//! One gallery per line: the set of gallery changes published on a line,
//! and what the gallery holds because of them. State only, no I/O (the
//! gallery logs it, the daemon carries it over MQTT).
//!
//! Boxes of a line receive changes in different orders (add and remove are
//! two topics; redeliveries; a box that was off catches up later; a new box
//! merges a whole state fetched from the line). So the gallery a set of
//! changes means is defined by the set alone, never by arrival order:
//!
//! - every change carries a line-unique [`ChangeId`], a ULID: 48 bits of the
//!   publisher's clock in milliseconds, then 80 random bits. Ids order the
//!   changes;
//! - an added item's gallery id is derived from its change id
//!   ([`item_id`]), so every box gives it the same id;
//! - a remove (by ids or by label) takes out the items of adds *older* than
//!   itself, whenever either arrives; items the box had before any line
//!   change (its bundle's gallery) count as older than every change.
//!
//! Applying a change twice changes nothing, and merging two sets is their
//! union, so boxes that have seen the same changes hold the same items with
//! the same ids, whatever happened in between.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Ids of items added through the line start here: above any id a box gives
/// out itself, below 2^53 so that JavaScript controllers read them exactly.
pub const LINE_ID_BASE: i64 = 1 << 52;

/// A line-unique change id: a ULID (26 characters of Crockford base32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeId(u128);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl ChangeId {
    /// A new id: now, and 80 random bits.
    pub fn generate() -> ChangeId {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut random = [0u8; 10];
        // The OS generator does not fail on Linux once booted; a zero tail
        // would still be unique per millisecond and publisher in practice.
        let _ = getrandom::getrandom(&mut random);
        ChangeId::from_parts(ms, random)
    }

    /// The id of `ms` (48 bits are kept) and an 80-bit tail.
    pub fn from_parts(ms: u64, random: [u8; 10]) -> ChangeId {
        let mut tail = [0u8; 16];
        tail[6..].copy_from_slice(&random);
        let low = u128::from_be_bytes(tail);
        ChangeId((u128::from(ms & 0xFFFF_FFFF_FFFF) << 80) | low)
    }

    /// The publisher's clock when it made the id, in ms since the Unix epoch.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *c = CROCKFORD[((self.0 >> shift) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for ChangeId {
    type Err = String;

    fn from_str(s: &str) -> Result<ChangeId, String> {
        if s.len() != 26 {
            return Err(format!(
                "{s:?} is not a ULID: it has {} characters, a ULID 26",
                s.chars().count()
            ));
        }
        let mut v: u128 = 0;
        for (i, ch) in s.bytes().enumerate() {
            // Crockford: case-insensitive; I and L read as 1, O as 0.
            let d = match ch.to_ascii_uppercase() {
                b'O' => 0,
                b'I' | b'L' => 1,
                c => CROCKFORD.iter().position(|&x| x == c).ok_or_else(|| {
                    format!(
                        "{s:?} is not a ULID: {:?} is not a base32 digit",
                        ch as char
                    )
                })? as u128,
            };
            if i == 0 && d > 7 {
                return Err(format!(
                    "{s:?} is not a ULID: it is over 128 bits (the first character is at most 7)"
                ));
            }
            v = (v << 5) | d;
        }
        Ok(ChangeId(v))
    }
}

impl Serialize for ChangeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChangeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ChangeId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The gallery id every box gives the item a line add makes.
pub fn item_id(change: ChangeId) -> i64 {
    let h = Sha256::digest(change.0.to_be_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    LINE_ID_BASE | (i64::from_be_bytes(first) & (LINE_ID_BASE - 1))
}

/// Whether a gallery id was given out by a line add.
pub fn is_line_id(id: i64) -> bool {
    (LINE_ID_BASE..LINE_ID_BASE << 1).contains(&id)
}

/// One change to the line's gallery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A product photo enrolled.
    Add {
        /// Product label.
        label: String,
        /// Where the photo came from.
        source: String,
        /// sha256 of the photo, where known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// When the box that computed the feature added it.
        added_unix: u64,
        /// The unit-length feature (little-endian f32, base64). Empty in a
        /// state where the item was removed since: it is never needed again.
        #[serde(with = "vector_base64", default)]
        vector: Vec<f32>,
    },
    /// Items taken out: these ids, or every item with this label.
    Remove {
        /// Ids.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<i64>,
        /// Label.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
}

/// A change with its id: a record of the line log, an element of a state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logged {
    /// Its id.
    pub change_id: ChangeId,
    /// What it does.
    #[serde(flatten)]
    pub change: Change,
}

mod vector_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("vector: {e}")))?;
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::custom(format!(
                "vector: {} bytes is not a whole number of f32",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// The line's gallery version: which changes a box has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineVersion {
    /// How many changes.
    pub changes: usize,
    /// The newest change's id.
    pub last: Option<ChangeId>,
    /// First 16 hex digits of the sha256 of every change id, in order: two
    /// boxes with the same digest have applied the same changes.
    pub digest: String,
}

impl fmt::Display for LineVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last {
            Some(last) => write!(
                f,
                "{} changes, last {last}, digest {}",
                self.changes, self.digest
            ),
            None => write!(f, "no changes (digest {})", self.digest),
        }
    }
}

/// A line item the gallery should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted<'a> {
    /// The add that made it.
    pub change_id: ChangeId,
    /// Its label.
    pub label: &'a str,
    /// Its source.
    pub source: &'a str,
    /// Its photo's sha256.
    pub sha256: Option<&'a String>,
    /// When it was added.
    pub added_unix: u64,
    /// Its feature (empty if this box never received it).
    pub vector: &'a [f32],
}

/// What a set of changes means for the gallery.
#[derive(Debug, Default)]
pub struct Effect<'a> {
    /// Line items that stay, by gallery id.
    pub items: BTreeMap<i64, Wanted<'a>>,
    /// Ids removed by some change (of the box's own items: removed whatever the order).
    pub removed_ids: HashSet<i64>,
    /// Labels removed by some change.
    pub removed_labels: HashSet<&'a str>,
    /// Adds whose derived id an older add already has (vanishingly rare; skipped on every box alike).
    pub collisions: Vec<ChangeId>,
}

impl Effect<'_> {
    /// Whether an item the box had before the line's changes (the bundle's
    /// gallery, or one added on the box's own topic) has been removed.
    pub fn removes_own(&self, id: i64, label: &str) -> bool {
        self.removed_ids.contains(&id) || self.removed_labels.contains(label)
    }
}

/// Every change a box has applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineState {
    changes: BTreeMap<ChangeId, Change>,
}

impl LineState {
    /// Whether the change is already in.
    pub fn contains(&self, id: ChangeId) -> bool {
        self.changes.contains_key(&id)
    }

    /// Adds a change; `false` if it was already in (nothing changes).
    pub fn insert(&mut self, l: Logged) -> bool {
        if self.changes.contains_key(&l.change_id) {
            return false;
        }
        self.changes.insert(l.change_id, l.change);
        true
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether no change was ever applied.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&ChangeId, &Change)> {
        self.changes.iter()
    }

    /// How many of this state's changes are not among `ids` (another
    /// state's, as received: only their ids are needed).
    pub fn missing_from(&self, ids: &HashSet<ChangeId>) -> usize {
        self.changes.keys().filter(|k| !ids.contains(k)).count()
    }

    /// The version: how many changes, the last, and a digest of them all.
    pub fn version(&self) -> LineVersion {
        let mut h = Sha256::new();
        for id in self.changes.keys() {
            h.update(id.0.to_be_bytes());
        }
        LineVersion {
            changes: self.changes.len(),
            last: self.changes.keys().next_back().copied(),
            digest: hex::encode(&h.finalize()[..8]),
        }
    }

    /// What the changes mean, by the rules in the module's documentation.
    pub fn effect(&self) -> Effect<'_> {
        let mut newest_id_removal: HashMap<i64, ChangeId> = HashMap::new();
        let mut newest_label_removal: HashMap<&str, ChangeId> = HashMap::new();
        for (&at, c) in &self.changes {
            if let Change::Remove { ids, label } = c {
                for &id in ids {
                    let e = newest_id_removal.entry(id).or_insert(at);
                    *e = (*e).max(at);
                }
                if let Some(l) = label {
                    let e = newest_label_removal.entry(l.as_str()).or_insert(at);
                    *e = (*e).max(at);
                }
            }
        }
        let mut effect = Effect {
            removed_ids: newest_id_removal.keys().copied().collect(),
            removed_labels: newest_label_removal.keys().copied().collect(),
            ..Effect::default()
        };
        let mut taken = HashSet::new();
        for (&at, c) in &self.changes {
            let Change::Add {
                label,
                source,
                sha256,
                added_unix,
                vector,
            } = c
            else {
                continue;
            };
            let id = item_id(at);
            if !taken.insert(id) {
                effect.collisions.push(at);
                continue;
            }
            let newer = |removal: Option<&ChangeId>| removal.is_some_and(|&r| r > at);
            if newer(newest_id_removal.get(&id)) || newer(newest_label_removal.get(label.as_str()))
            {
                continue;
            }
            effect.items.insert(
                id,
                Wanted {
                    change_id: at,
                    label,
                    source,
                    sha256: sha256.as_ref(),
                    added_unix: *added_unix,
                    vector,
                },
            );
        }
        effect
    }

    /// The state to hand to another box: adds removed since lose their
    /// vectors (never needed again), so the state stays the gallery's size.
    pub fn export(&self) -> Vec<Logged> {
        let live: HashSet<ChangeId> = self.effect().items.values().map(|w| w.change_id).collect();
        self.changes
            .iter()
            .map(|(&id, c)| {
                let mut change = c.clone();
                if let Change::Add { vector, .. } = &mut change {
                    if !live.contains(&id) {
                        vector.clear();
                    }
                }
                Logged {
                    change_id: id,
                    change,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, r: u8) -> ChangeId {
        ChangeId::from_parts(ms, [r; 10])
    }

    fn add(at: ChangeId, label: &str) -> Logged {
        Logged {
            change_id: at,
            change: Change::Add {
                label: label.into(),
                source: "s".into(),
                sha256: None,
                added_unix: 1,
                vector: vec![1.0, 0.0],
            },
        }
    }

    fn remove(at: ChangeId, ids: Vec<i64>, label: Option<&str>) -> Logged {
        Logged {
            change_id: at,
            change: Change::Remove {
                ids,
                label: label.map(Into::into),
            },
        }
    }

    #[test]
    fn ulids_round_trip_order_by_time_and_refuse_bad_text() {
        let a = ChangeId::generate();
        let text = a.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<ChangeId>(), Ok(a));
        assert_eq!(text.to_lowercase().parse::<ChangeId>(), Ok(a));
        // The reference implementation's example (ulid/javascript: decodeTime).
        let spec: ChangeId = "01ARYZ6S41TSV4RRFFQ69G5FAV".parse().unwrap();
        assert_eq!(spec.unix_ms(), 1_469_918_176_385);
        assert_eq!(spec.to_string(), "01ARYZ6S41TSV4RRFFQ69G5FAV");
        assert!(id(5, 0) < id(6, 0) && id(5, 0) < id(5, 1));
        for (bad, why) in [
            ("01ARZ3NDEKTSV4RRFFQ69G5FA", "26"),
            ("01ARZ3NDEKTSV4RRFFQ69G5FAU", "base32"),
            ("81ARZ3NDEKTSV4RRFFQ69G5FAV", "128 bits"),
        ] {
            let e = bad.parse::<ChangeId>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let json = serde_json::to_string(&add(spec, "x")).unwrap();
        assert!(
            json.contains(r#""change_id":"01ARYZ6S41TSV4RRFFQ69G5FAV""#),
            "{json}"
        );
        assert!(json.contains(r#""op":"add""#), "{json}");
        assert_eq!(
            serde_json::from_str::<Logged>(&json).unwrap(),
            add(spec, "x")
        );
    }

    #[test]
    fn derived_ids_are_line_ids_and_safe_in_javascript() {
        for r in 0..50 {
            let i = item_id(id(1_700_000_000_000 + r, r as u8));
            assert!(is_line_id(i) && i < (1 << 53), "{i}");
        }
        assert!(!is_line_id(0) && !is_line_id(LINE_ID_BASE - 1));
    }

    /// Every order of the same changes gives the same gallery.
    #[test]
    fn the_set_decides_not_the_order() {
        let (a1, a2, r_label, a3, r_id) = (id(1, 1), id(2, 2), id(3, 3), id(4, 4), id(5, 5));
        let changes = vec![
            add(a1, "cola"),
            add(a2, "cola"),
            remove(r_label, vec![], Some("cola")),
            add(a3, "cola"),
            remove(r_id, vec![item_id(a3), 7], None),
            add(id(6, 6), "tea"),
        ];
        let mut reference = None;
        // All rotations and the reverse, with duplicates thrown in.
        for start in 0..changes.len() {
            for reverse in [false, true] {
                let mut order: Vec<_> = changes[start..]
                    .iter()
                    .chain(&changes[..start])
                    .cloned()
                    .collect();
                if reverse {
                    order.reverse();
                }
                let mut s = LineState::default();
                for c in order.iter().chain(&order[..2]) {
                    s.insert(c.clone());
                }
                let e = s.effect();
                let got: Vec<(i64, String)> = e
                    .items
                    .iter()
                    .map(|(&i, w)| (i, w.label.to_string()))
                    .collect();
                match &reference {
                    None => reference = Some((got, s.version())),
                    Some((items, v)) => {
                        assert_eq!(&got, items);
                        assert_eq!(&s.version(), v);
                    }
                }
            }
        }
        let (items, v) = reference.unwrap();
        // The label removal took both older colas; the newer one went by id.
        assert_eq!(items, vec![(item_id(id(6, 6)), "tea".to_string())]);
        assert_eq!(v.changes, 6);
        let mut s = LineState::default();
        for c in &changes {
            s.insert(c.clone());
        }
        let e = s.effect();
        assert!(e.removes_own(7, "juice") && e.removes_own(1, "cola") && !e.removes_own(1, "tea"));
    }

    #[test]
    fn an_older_removal_does_not_take_a_newer_add() {
        let mut s = LineState::default();
        s.insert(remove(id(10, 0), vec![], Some("cola")));
        s.insert(add(id(11, 0), "cola"));
        assert_eq!(s.effect().items.len(), 1);
        s.insert(add(id(9, 0), "cola")); // published before the removal, arrived after
        assert_eq!(s.effect().items.len(), 1);
    }

    #[test]
    fn export_drops_vectors_of_removed_items_and_merges_back() {
        let mut s = LineState::default();
        s.insert(add(id(1, 0), "a"));
        s.insert(add(id(2, 0), "b"));
        s.insert(remove(id(3, 0), vec![], Some("a")));
        let out = s.export();
        let json = serde_json::to_vec(&out).unwrap();
        let back: Vec<Logged> = serde_json::from_slice(&json).unwrap();
        let vectors: Vec<usize> = back
            .iter()
            .map(|l| match &l.change {
                Change::Add { vector, .. } => vector.len(),
                Change::Remove { .. } => 99,
            })
            .collect();
        assert_eq!(vectors, vec![0, 2, 99]);
        let mut t = LineState::default();
        let ids = |x: &LineState| x.iter().map(|(id, _)| *id).collect::<HashSet<_>>();
        assert_eq!(s.missing_from(&ids(&t)), 3);
        for l in back {
            t.insert(l);
        }
        assert_eq!(t.version(), s.version());
        assert_eq!(s.missing_from(&ids(&t)), 0);
        assert_eq!(
            t.effect().items.keys().collect::<Vec<_>>(),
            s.effect().items.keys().collect::<Vec<_>>()
        );
    }
}
