//! The template hash: a fingerprint of a desired DaemonSet, stored in its annotations, so that the
//! reconciler updates the DaemonSet in the cluster only when the desired one changed (comparing whole
//! objects would trip over the defaults the API server fills in).

use std::io;

use k8s_openapi::api::apps::v1::DaemonSet;

/// Annotation on the DaemonSet that holds its template hash (decimal FNV-1a 32-bit).
pub const TEMPLATE_HASH_ANNOTATION: &str = "internal.operator.dynatrace.com/template-hash";

const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a 32-bit, fed by serde_json as it serializes (no intermediate buffer).
struct Fnv1a(u32);

impl io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for byte in buf {
            self.0 = (self.0 ^ u32::from(*byte)).wrapping_mul(FNV_PRIME);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The DaemonSet without the hash annotation `key`, and without an annotation map left empty by its
/// removal, so that hashing a DaemonSet that already carries a hash gives the same result.
fn without_hash(mut ds: DaemonSet, key: &str) -> DaemonSet {
    if let Some(annotations) = ds.metadata.annotations.as_mut() {
        annotations.remove(key);
        if annotations.is_empty() {
            ds.metadata.annotations = None;
        }
    }
    ds
}

fn hash_of(ds: &DaemonSet) -> String {
    let mut hasher = Fnv1a(FNV_OFFSET_BASIS);
    // Cannot fail: the writer never fails, every map key in k8s-openapi types is a string and there are
    // no floats. Were it to fail, the hash of the prefix would still be deterministic.
    let _ = serde_json::to_writer(&mut hasher, ds);
    hasher.0.to_string()
}

/// The template hash of a DaemonSet: FNV-1a 32-bit over its JSON serialization without the hash
/// annotation, in decimal. The same DaemonSet always gives the same hash: every map in it is ordered.
pub fn template_hash(ds: &DaemonSet) -> String {
    template_hash_under(ds, TEMPLATE_HASH_ANNOTATION)
}

/// The DaemonSet with its template hash stored under [`TEMPLATE_HASH_ANNOTATION`] in its metadata
/// annotations (replacing any hash already there).
pub fn with_template_hash(ds: DaemonSet) -> DaemonSet {
    with_template_hash_under(ds, TEMPLATE_HASH_ANNOTATION)
}

/// [`template_hash`] for a DaemonSet that keeps its hash under the annotation `key` (the legacy
/// `OneAgent` DaemonSet uses `internal.oneagent.dynatrace.com/template-hash`).
pub fn template_hash_under(ds: &DaemonSet, key: &str) -> String {
    hash_of(&without_hash(ds.clone(), key))
}

/// [`with_template_hash`] with the hash stored under the annotation `key` (replacing any hash already
/// there).
pub fn with_template_hash_under(ds: DaemonSet, key: &str) -> DaemonSet {
    let mut ds = without_hash(ds, key);
    let hash = hash_of(&ds);
    ds.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_owned(), hash);
    ds
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn fnv1a(bytes: &[u8]) -> u32 {
        let mut hasher = Fnv1a(FNV_OFFSET_BASIS);
        hasher.write_all(bytes).unwrap();
        hasher.0
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    fn ds(name: &str) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn hash_is_stable_idempotent_and_ignores_itself() {
        let once = with_template_hash(ds("a"));
        let twice = with_template_hash(once.clone());
        assert_eq!(once, twice);
        let hash = &once.metadata.annotations.as_ref().unwrap()[TEMPLATE_HASH_ANNOTATION];
        assert_eq!(hash, &template_hash(&ds("a")));
        assert_eq!(hash, &template_hash(&once));
        assert!(hash.parse::<u32>().is_ok(), "decimal: {hash}");

        // The hash is over the JSON, so it is the FNV-1a of exactly that text.
        let json = serde_json::to_vec(&ds("a")).unwrap();
        assert_eq!(hash, &fnv1a(&json).to_string());
    }

    #[test]
    fn hash_changes_with_the_object_and_keeps_other_annotations() {
        assert_ne!(template_hash(&ds("a")), template_hash(&ds("b")));
        let mut annotated = ds("a");
        annotated.metadata.annotations = Some([("x".to_owned(), "y".to_owned())].into());
        let hashed = with_template_hash(annotated.clone());
        let annotations = hashed.metadata.annotations.unwrap();
        assert_eq!(annotations["x"], "y");
        assert_ne!(annotations[TEMPLATE_HASH_ANNOTATION], template_hash(&ds("a")));
    }

    #[test]
    fn hash_under_another_key_matches_the_default_and_ignores_itself() {
        const KEY: &str = "internal.oneagent.dynatrace.com/template-hash";
        let hashed = with_template_hash_under(ds("a"), KEY);
        let annotations = hashed.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations[KEY], template_hash(&ds("a")), "same hash, other key");
        assert_eq!(template_hash_under(&hashed, KEY), annotations[KEY]);
        assert_eq!(with_template_hash_under(hashed.clone(), KEY), hashed);
        // The default key is not special to the keyed variant: it is hashed like any other annotation.
        assert_ne!(
            template_hash_under(&with_template_hash(ds("a")), KEY),
            template_hash(&ds("a"))
        );
    }
}
