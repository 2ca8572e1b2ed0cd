//! The source seam: where objects come from, told as events.
//!
//! A source reports what exists as [`SourceEvent`]s, and one snapshot builder
//! ([`crate::snapshot::Builder`]) turns them into the snapshot requests read. Directory mode
//! ([`dir::DirectoryScanner`]) diffs files against its previous scan and reports only
//! changes; Kubernetes mode (watchers) reports the same events. The vocabulary is
//! kube-runtime's watcher's (`Apply`, `Delete`, and a full list `Init`, `InitApply`…,
//! `InitDone`, after which an object not listed is gone): a full list never exposes a
//! half-listed world, and the first snapshot is published only after the first full list.
//!
//! Architecture invariant: nothing here builds a domain object (provider, generator,
//! federation, policy); a source only says what is there and what it could not read.

pub mod dir;
pub mod kubernetes;
mod manifest;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::resources::{ContentHash, ObjectMeta, content_hash, text_hash};

pub use manifest::{Parsed, parse_manifest};

/// A core kind watched object by object (what stores, generators and templates reference:
/// never every object of the kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamedKind {
    /// `v1` Secret.
    Secret,
    /// `v1` ConfigMap.
    ConfigMap,
}

impl NamedKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            NamedKind::Secret => "Secret",
            NamedKind::ConfigMap => "ConfigMap",
        }
    }
}

/// One referenced object of a [`NamedKind`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedObject {
    /// Its kind.
    pub kind: NamedKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl NamedObject {
    /// A Secret.
    pub fn secret(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamedObject {
            kind: NamedKind::Secret,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A ConfigMap.
    pub fn config_map(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamedObject {
            kind: NamedKind::ConfigMap,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Where a reference ranks in [`watch_order_tiered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefTier {
    /// What a store or generator needs to work (its credentials).
    Primary,
    /// What a template reads (`templateFrom`): after every namespace's primary references.
    Template,
}

/// [`watch_order_tiered`] with every reference [`RefTier::Primary`].
pub fn watch_order<'a, I>(references: I, per_namespace: usize) -> Vec<NamedObject>
where
    I: IntoIterator<Item = (Option<&'a str>, std::collections::BTreeSet<NamedObject>)>,
{
    watch_order_tiered(
        references
            .into_iter()
            .map(|(owner, refs)| (owner, RefTier::Primary, refs)),
        per_namespace,
    )
}

/// The objects to watch, in order of priority and without repeats, so that whatever is cut
/// at the end (a global cap) is what matters least and no namespace crowds out another:
///
/// 1. those referenced by cluster-scoped objects (written by cluster administrators);
/// 2. every namespace's [`RefTier::Primary`] references, taken one namespace at a time in
///    turn (round-robin: the first of each namespace, then the second…), never the
///    alphabetically first namespaces' all before the others';
/// 3. every namespace's [`RefTier::Template`] references, round-robin likewise.
///
/// At most `per_namespace` objects of each namespace's own (both tiers together, its
/// primary ones first). `references` yields, per referencing object, its namespace (`None`:
/// cluster-scoped), its tier and what it references.
pub fn watch_order_tiered<'a, I>(references: I, per_namespace: usize) -> Vec<NamedObject>
where
    I: IntoIterator<
        Item = (
            Option<&'a str>,
            RefTier,
            std::collections::BTreeSet<NamedObject>,
        ),
    >,
{
    use std::collections::{BTreeMap, BTreeSet, HashSet};
    let mut cluster: BTreeSet<NamedObject> = BTreeSet::new();
    let mut namespaced: BTreeMap<(RefTier, &str), BTreeSet<NamedObject>> = BTreeMap::new();
    for (owner, tier, refs) in references {
        match owner {
            None => cluster.extend(refs),
            Some(ns) => namespaced.entry((tier, ns)).or_default().extend(refs),
        }
    }
    let mut seen: HashSet<NamedObject> = cluster.iter().cloned().collect();
    let mut out: Vec<NamedObject> = cluster.into_iter().collect();
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    for tier in [RefTier::Primary, RefTier::Template] {
        let mut queues: Vec<(&str, std::collections::btree_set::IntoIter<NamedObject>)> =
            namespaced
                .iter()
                .filter(|((t, _), _)| *t == tier)
                .map(|((_, ns), refs)| (*ns, refs.clone().into_iter()))
                .collect();
        while !queues.is_empty() {
            queues.retain_mut(|(ns, refs)| {
                let n = taken.entry(ns).or_insert(0);
                if *n >= per_namespace {
                    return false;
                }
                for r in refs.by_ref() {
                    if seen.insert(r.clone()) {
                        out.push(r);
                        *n += 1;
                        return true;
                    }
                }
                false
            });
        }
    }
    out
}

/// Identifies an object within its source, and orders objects (of two objects claiming
/// one name, the first wins). Shown as the object's origin in messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// Directory mode: document `doc` of the manifest file `path`, item `item` of a `List`.
    /// Shown `path#doc` or `path#doc/items/item`.
    Document {
        /// The file.
        path: Arc<Path>,
        /// 0-based document index.
        doc: u32,
        /// 0-based index in a `List` document's `items`.
        item: Option<u32>,
    },
    /// A whole file (a `.cedar` policy file). Shown as its path.
    File {
        /// The file.
        path: Arc<Path>,
    },
    /// Kubernetes mode: a resource, unique by API group, kind, namespace and name.
    /// Shown `kubernetes:Kind.group/namespace/name`.
    Resource {
        /// API group (empty for the core group).
        group: String,
        /// Kind.
        kind: String,
        /// Namespace, for namespaced kinds.
        namespace: Option<String>,
        /// Name.
        name: String,
    },
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Document { path, doc, item } => {
                write!(f, "{}#{doc}", path.display())?;
                if let Some(i) = item {
                    write!(f, "/items/{i}")?;
                }
                Ok(())
            }
            ObjectKey::File { path } => write!(f, "{}", path.display()),
            ObjectKey::Resource {
                group,
                kind,
                namespace,
                name,
            } => {
                write!(f, "kubernetes:{kind}")?;
                if !group.is_empty() {
                    write!(f, ".{group}")?;
                }
                match namespace {
                    Some(ns) => write!(f, "/{ns}/{name}"),
                    None => write!(f, "/{name}"),
                }
            }
        }
    }
}

/// Whether the origin `inner` (`path#doc[/items/i]`, `path`) lies inside `outer`: a
/// directory, a file, or a document.
pub fn inside(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('#') || rest.starts_with('/'))
}

/// One Kubernetes object, as read from a manifest or a watch.
#[derive(Clone)]
pub struct RawObject {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// The whole object, for kind-specific parsing.
    pub body: serde_json::Value,
    /// [`content_hash`] of `body`.
    pub hash: ContentHash,
    /// Where it was read (its [`ObjectKey`] shown), for messages.
    pub origin: String,
    /// `metadata.creationTimestamp` as the API server set it (Kubernetes mode only; `None`
    /// for manifests read from a directory, whose timestamps anyone may write). Not
    /// content: not in `body` nor `hash`. Decides which of two federations of different
    /// kinds holds a shared name when none is in force (the oldest).
    pub created: Option<jiff::Timestamp>,
}

// The body may hold Secret data: Debug shows only what identifies the object.
impl fmt::Debug for RawObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawObject")
            .field("api_version", &self.api_version)
            .field("kind", &self.kind)
            .field("metadata", &self.metadata)
            .field("origin", &self.origin)
            .field("created", &self.created)
            .finish()
    }
}

impl RawObject {
    /// An object from where it was read, its identifying fields and its whole body
    /// (hashed here).
    pub fn new(
        key: &ObjectKey,
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        body: serde_json::Value,
    ) -> Self {
        let hash = content_hash(&body);
        RawObject {
            api_version,
            kind,
            metadata,
            body,
            hash,
            origin: key.to_string(),
            created: None,
        }
    }

    /// `Kind/namespace/name` or `Kind/name`, for messages.
    pub fn display_name(&self) -> String {
        match &self.metadata.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.metadata.name),
            None => format!("{}/{}", self.kind, self.metadata.name),
        }
    }

    /// The part of `apiVersion` before the `/`: the API group, or `v1` for the core group.
    pub fn group(&self) -> &str {
        self.api_version.split('/').next().unwrap_or_default()
    }
}

/// What a source reports about one object.
#[derive(Debug, Clone)]
pub enum SourceObject {
    /// A Kubernetes object.
    Manifest(Box<RawObject>),
    /// A hand-written `.cedar` policy file (its text).
    Policy(String),
}

impl SourceObject {
    /// The content hash: [`RawObject::hash`], or the hash of the policy text.
    pub fn hash(&self) -> ContentHash {
        match self {
            SourceObject::Manifest(raw) => raw.hash,
            SourceObject::Policy(text) => text_hash(text),
        }
    }
}

/// One change reported by a source.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// An object appeared or changed.
    Apply(ObjectKey, SourceObject),
    /// An object is gone.
    Delete(ObjectKey),
    /// A full list begins: an `InitApply` for every object follows, then `InitDone`.
    Init,
    /// One object of a full list.
    InitApply(ObjectKey, SourceObject),
    /// The full list is complete: objects not listed since `Init` are gone.
    InitDone,
    /// What the source could not read, replacing its previous report.
    Problems {
        /// Every problem, with origin and reason.
        errors: Vec<LoadError>,
        /// Origins (a file, a document) whose objects were not read again because of
        /// those problems: the source reports no change for them, and they serve in their
        /// last good form (the file is broken, not emptied).
        stale: Vec<String>,
    },
}

/// Something that could not be loaded, with where and why. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// File (and document) it came from.
    pub origin: String,
    /// The object, when known (`Kind/name`).
    pub object: Option<String>,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {}: {}", self.origin, o, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster's references first, then every namespace's store and generator
    /// references in turn, then `templateFrom` references in turn: a namespace's templates
    /// neither take its stores' slots nor, through alphabetical order, the global cap from
    /// other namespaces (before: one tier, namespace after namespace).
    #[test]
    fn watch_order_is_tiered_and_round_robin() {
        use std::collections::BTreeSet;
        let s = |ns: &str, name: &str| NamedObject::secret(ns, name);
        let set = |v: &[NamedObject]| v.iter().cloned().collect::<BTreeSet<_>>();
        let many = |ns: &str, prefix: &str, n: usize| {
            (0..n)
                .map(|i| s(ns, &format!("{prefix}{i:02}")))
                .collect::<Vec<_>>()
        };
        let order = watch_order_tiered(
            [
                (Some("aa"), RefTier::Template, set(&many("aa", "tpl", 10))),
                (Some("aa"), RefTier::Primary, set(&many("aa", "store", 2))),
                (Some("bb"), RefTier::Primary, set(&many("bb", "store", 3))),
                (None, RefTier::Primary, set(&[s("zz", "admin")])),
                (
                    Some("bb"),
                    RefTier::Template,
                    set(&[s("bb", "store00"), s("bb", "tpl")]),
                ),
            ],
            4,
        );
        let shown: Vec<String> = order
            .iter()
            .map(|o| format!("{}/{}", o.namespace, o.name))
            .collect();
        assert_eq!(
            shown,
            [
                "zz/admin",
                "aa/store00",
                "bb/store00",
                "aa/store01",
                "bb/store01",
                "bb/store02",
                // Templates last; aa has 2 slots left, bb 1 (its store00 is not repeated).
                "aa/tpl00",
                "bb/tpl",
                "aa/tpl01",
            ]
        );
    }

    #[test]
    fn keys_show_as_origins_and_sort_by_file_then_position() {
        let doc = |p: &str, doc, item| ObjectKey::Document {
            path: Arc::from(Path::new(p)),
            doc,
            item,
        };
        assert_eq!(doc("d/f.yaml", 2, None).to_string(), "d/f.yaml#2");
        assert_eq!(
            doc("d/f.yaml", 2, Some(0)).to_string(),
            "d/f.yaml#2/items/0"
        );
        let mut keys = [
            doc("a-b.yaml", 0, None),
            doc("a/b.yaml", 10, None),
            doc("a/b.yaml", 2, Some(1)),
            doc("a/b.yaml", 2, None),
        ];
        keys.sort();
        // Paths compare by component, as the directory listing is sorted.
        let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "a/b.yaml#2",
                "a/b.yaml#2/items/1",
                "a/b.yaml#10",
                "a-b.yaml#0"
            ]
        );
        assert!(inside("d/f.yaml#2/items/0", "d/f.yaml#2"));
        assert!(inside("d/f.yaml#2", "d"));
        assert!(!inside("d/f.yaml#20", "d/f.yaml#2"));
        assert!(!inside("d2/f.yaml#0", "d"));
    }
}
