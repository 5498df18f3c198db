//! The garbage-collection plan, without I/O: given what is in the data directory (with ages), the
//! DynaKube records and the kernel's mount table, which directories to delete and why.
//!
//! The rules, each a guard against a complaint about the reference (versions deleted while in use):
//! - `codemodules/<v>` goes only when no DynaKube record wants `v` **and** no overlay uses it as a lower dir;
//! - `dynakubes/<dk>/config/<id>` likewise: not the record's current layer, not a lower dir;
//! - `dynakubes/<dk>` goes when it has no record and nothing left below it after this plan;
//! - `appmounts/<id>` goes when nothing is mounted at or below it and it is at least the maximum unmounted
//!   age old;
//! - `staging/<x>` goes when no install of this process is using it (a crash's leftover, of an install or
//!   of a GC deletion, which moves its directory there first).
//!
//! The caller re-reads the mount table right before each deletion and asks [`Removal::still_safe`]:
//! a mount made after the plan was computed then still stops the deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::{DynakubeRecord, Layout};
use crate::mountinfo::MountTable;

/// The default of `MAX_UNMOUNTED_VOLUME_AGE`, in days.
pub const DEFAULT_MAX_UNMOUNTED_VOLUME_AGE_DAYS: i64 = 7;

/// `MAX_UNMOUNTED_VOLUME_AGE` (whole days): unset → 7 days, `≤ 0` → zero (remove at once). An unparsable
/// value gives the default and the text of a warning for the log.
pub fn max_unmounted_volume_age(value: Option<&str>) -> (Duration, Option<String>) {
    let default = Duration::from_secs(DEFAULT_MAX_UNMOUNTED_VOLUME_AGE_DAYS as u64 * 86_400);
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (default, None);
    };
    match value.parse::<i64>() {
        Ok(days) if days <= 0 => (Duration::ZERO, None),
        Ok(days) => (
            Duration::from_secs(u64::try_from(days).unwrap_or(0).saturating_mul(86_400)),
            None,
        ),
        Err(_) => (
            default,
            Some(format!(
                "MAX_UNMOUNTED_VOLUME_AGE={value:?} is not a whole number of days; using the default of \
                 {DEFAULT_MAX_UNMOUNTED_VOLUME_AGE_DAYS} days"
            )),
        ),
    }
}

/// One directory entry and how long ago it was last modified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name in its directory.
    pub name: String,
    /// Time since its modification time (zero when it is in the future).
    pub age: Duration,
}

impl Entry {
    /// An entry.
    pub fn new(name: impl Into<String>, age: Duration) -> Self {
        Self {
            name: name.into(),
            age,
        }
    }
}

/// One `dynakubes/<dk>` directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynakubeDir {
    /// Its record (`dynakube.json`), if there is one.
    pub record: Option<DynakubeRecord>,
    /// The entries of `config/`.
    pub configs: Vec<Entry>,
}

/// What the data directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// `codemodules/*`.
    pub codemodules: Vec<Entry>,
    /// `staging/*`.
    pub staging: Vec<Entry>,
    /// `dynakubes/*` by name.
    pub dynakubes: BTreeMap<String, DynakubeDir>,
    /// `appmounts/*`.
    pub app_mounts: Vec<Entry>,
}

/// What the plan is computed with besides the listing.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unmounted app volumes at least this old are removed.
    pub max_unmounted_volume_age: Duration,
    /// Names under `staging/` that an install of this process is using right now.
    pub active_staging: BTreeSet<String>,
}

/// Why something is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A code-module version no record wants and no overlay uses.
    UnusedVersion,
    /// A configuration layer that is not its DynaKube's current one and no overlay uses.
    UnusedConfigLayer,
    /// The directory of a DynaKube without a record, with nothing left below it.
    OrphanDynakube,
    /// An app volume's directory with nothing mounted, old enough.
    UnmountedVolume,
    /// A staging entry no install is using (left by a crash).
    StaleStaging,
}

impl Reason {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnusedVersion => "unused_version",
            Self::UnusedConfigLayer => "unused_config_layer",
            Self::OrphanDynakube => "orphan_dynakube",
            Self::UnmountedVolume => "unmounted_volume",
            Self::StaleStaging => "stale_staging",
        }
    }
}

/// One planned deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The directory to delete with everything below it.
    pub path: PathBuf,
    /// Why.
    pub reason: Reason,
}

impl Removal {
    /// Whether the deletion is still safe with `mounts`, a mount table read right before it: nothing
    /// uses the path as an overlay lower dir, and nothing is mounted at or below it.
    pub fn still_safe(&self, mounts: &MountTable) -> bool {
        !in_use(mounts, &self.path)
    }
}

/// Whether `path` (or something below it) is an overlay's lower, upper or work dir, or has a mount at
/// or below it. Upper and work dirs matter when the overlay's own mount point was unmounted but a bind
/// of it (the kubelet's target) is still there.
fn in_use(mounts: &MountTable, path: &Path) -> bool {
    mounts.in_use_as_lower_dir(path)
        || mounts.under(path).next().is_some()
        || mounts.mounts.iter().filter(|m| m.fs_type == "overlay").any(|m| {
            m.super_options
                .split(',')
                .filter_map(|o| o.strip_prefix("upperdir=").or_else(|| o.strip_prefix("workdir=")))
                .any(|dir| Path::new(dir).starts_with(path))
        })
}

/// The deletions for `listing` under `layout`, with the mount table `mounts` as read for the plan.
/// Children come before their parents (a config layer before its DynaKube's directory).
pub fn plan(layout: &Layout, listing: &Listing, mounts: &MountTable, policy: &Policy) -> Vec<Removal> {
    let mut removals = Vec::new();
    let in_use = |path: &Path| in_use(mounts, path);

    let wanted: BTreeSet<&str> = listing
        .dynakubes
        .values()
        .filter_map(|dir| dir.record.as_ref()?.version.as_deref())
        .collect();
    for entry in &listing.codemodules {
        let path = layout.codemodules().join(&entry.name);
        if !wanted.contains(entry.name.as_str()) && !in_use(&path) {
            removals.push(Removal {
                path,
                reason: Reason::UnusedVersion,
            });
        }
    }

    for entry in &listing.staging {
        if !policy.active_staging.contains(&entry.name) {
            removals.push(Removal {
                path: layout.staging().join(&entry.name),
                reason: Reason::StaleStaging,
            });
        }
    }

    for (name, dir) in &listing.dynakubes {
        let base = layout.dynakubes().join(name);
        let current = dir.record.as_ref().and_then(|r| r.config.as_deref());
        let mut kept = 0;
        for entry in &dir.configs {
            let path = base.join("config").join(&entry.name);
            if current != Some(entry.name.as_str()) && !in_use(&path) {
                removals.push(Removal {
                    path,
                    reason: Reason::UnusedConfigLayer,
                });
            } else {
                kept += 1;
            }
        }
        if dir.record.is_none() && kept == 0 && !in_use(&base) {
            removals.push(Removal {
                path: base,
                reason: Reason::OrphanDynakube,
            });
        }
    }

    for entry in &listing.app_mounts {
        let path = layout.app_mounts().join(&entry.name);
        if entry.age >= policy.max_unmounted_volume_age && !in_use(&path) {
            removals.push(Removal {
                path,
                reason: Reason::UnmountedVolume,
            });
        }
    }
    removals
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "1.276.0.20230901-120000";
    const V2: &str = "1.277.0.20230914-094321";
    const DAY: Duration = Duration::from_secs(86_400);

    fn layout() -> Layout {
        Layout::new("/data")
    }

    fn policy() -> Policy {
        Policy {
            max_unmounted_volume_age: 7 * DAY,
            active_staging: BTreeSet::new(),
        }
    }

    fn record(version: Option<&str>, config: Option<&str>) -> DynakubeRecord {
        DynakubeRecord {
            tenant_uuid: "abc12345".into(),
            version: version.map(str::to_owned),
            config: config.map(str::to_owned),
            max_failed_mount_attempts: 10,
        }
    }

    /// A mount table with one app overlay of `version` with layer `dk/config/<config>` for volume `id`,
    /// bind-mounted onto a kubelet target.
    fn overlay(id: &str, dk: &str, config: &str, version: &str) -> String {
        let options = format!(
            "rw,lowerdir=/data/dynakubes/{dk}/config/{config}:/data/codemodules/{version},\
             upperdir=/data/appmounts/{id}/var,workdir=/data/appmounts/{id}/work"
        );
        format!(
            "40 22 0:50 / /data/appmounts/{id}/mapped rw shared:30 - overlay overlay {options}\n\
             41 22 0:50 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/{id}/mount rw - overlay overlay {options}\n"
        )
    }

    fn table(text: &str) -> MountTable {
        MountTable::parse(&format!("22 1 253:1 / / rw shared:1 - ext4 /dev/vda rw\n{text}")).unwrap()
    }

    fn paths(removals: &[Removal]) -> Vec<(String, Reason)> {
        removals
            .iter()
            .map(|r| (r.path.display().to_string(), r.reason.clone()))
            .collect()
    }

    #[test]
    fn an_empty_data_dir_plans_nothing() {
        assert!(plan(&layout(), &Listing::default(), &table(""), &policy()).is_empty());
    }

    #[test]
    fn a_version_wanted_by_a_record_is_kept_even_when_unmounted() {
        let listing = Listing {
            codemodules: vec![Entry::new(V1, 30 * DAY), Entry::new(V2, 30 * DAY)],
            dynakubes: BTreeMap::from([(
                "dk".into(),
                DynakubeDir {
                    record: Some(record(Some(V2), None)),
                    configs: vec![],
                },
            )]),
            ..Listing::default()
        };
        assert_eq!(
            paths(&plan(&layout(), &listing, &table(""), &policy())),
            vec![(format!("/data/codemodules/{V1}"), Reason::UnusedVersion)]
        );
    }

    #[test]
    fn a_version_mounted_by_an_overlay_is_kept_even_when_no_record_wants_it() {
        let listing = Listing {
            codemodules: vec![Entry::new(V1, 30 * DAY), Entry::new(V2, 30 * DAY)],
            ..Listing::default()
        };
        let mounts = table(&overlay("csi-1", "gone", "c1", V1));
        assert_eq!(
            paths(&plan(&layout(), &listing, &mounts, &policy())),
            vec![(format!("/data/codemodules/{V2}"), Reason::UnusedVersion)]
        );
    }

    #[test]
    fn a_version_whose_name_is_a_prefix_of_a_mounted_one_is_still_removed() {
        let listing = Listing {
            codemodules: vec![Entry::new("1.2.3", DAY)],
            ..Listing::default()
        };
        let mounts = table(&overlay("csi-1", "dk", "c1", "1.2.3.4"));
        assert_eq!(plan(&layout(), &listing, &mounts, &policy()).len(), 1);
    }

    #[test]
    fn config_layers_other_than_the_current_and_unmounted_are_removed() {
        let listing = Listing {
            dynakubes: BTreeMap::from([(
                "dk".into(),
                DynakubeDir {
                    record: Some(record(Some(V2), Some("new"))),
                    configs: vec![
                        Entry::new("old-mounted", DAY),
                        Entry::new("old", DAY),
                        Entry::new("new", DAY),
                    ],
                },
            )]),
            codemodules: vec![Entry::new(V2, DAY)],
            ..Listing::default()
        };
        let mounts = table(&overlay("csi-1", "dk", "old-mounted", V2));
        assert_eq!(
            paths(&plan(&layout(), &listing, &mounts, &policy())),
            vec![("/data/dynakubes/dk/config/old".into(), Reason::UnusedConfigLayer)]
        );
    }

    #[test]
    fn a_dynakube_without_record_loses_its_layers_then_its_directory() {
        let listing = Listing {
            dynakubes: BTreeMap::from([(
                "gone".into(),
                DynakubeDir {
                    record: None,
                    configs: vec![Entry::new("c1", DAY)],
                },
            )]),
            ..Listing::default()
        };
        assert_eq!(
            paths(&plan(&layout(), &listing, &table(""), &policy())),
            vec![
                ("/data/dynakubes/gone/config/c1".into(), Reason::UnusedConfigLayer),
                ("/data/dynakubes/gone".into(), Reason::OrphanDynakube),
            ]
        );
    }

    #[test]
    fn a_dynakube_without_record_but_a_mounted_layer_keeps_both() {
        let listing = Listing {
            dynakubes: BTreeMap::from([(
                "gone".into(),
                DynakubeDir {
                    record: None,
                    configs: vec![Entry::new("c1", DAY)],
                },
            )]),
            ..Listing::default()
        };
        let mounts = table(&overlay("csi-1", "gone", "c1", V1));
        assert!(plan(&layout(), &listing, &mounts, &policy()).is_empty());
    }

    #[test]
    fn a_dynakube_with_a_record_keeps_its_directory_without_layers() {
        let listing = Listing {
            dynakubes: BTreeMap::from([(
                "dk".into(),
                DynakubeDir {
                    record: Some(record(None, None)),
                    configs: vec![],
                },
            )]),
            ..Listing::default()
        };
        assert!(plan(&layout(), &listing, &table(""), &policy()).is_empty());
    }

    #[test]
    fn unmounted_volumes_go_when_old_enough_mounted_ones_never() {
        let listing = Listing {
            app_mounts: vec![
                Entry::new("old", 8 * DAY),
                Entry::new("exactly", 7 * DAY),
                Entry::new("young", 6 * DAY),
                Entry::new("mounted-old", 30 * DAY),
            ],
            ..Listing::default()
        };
        let mounts = table(&overlay("mounted-old", "dk", "c1", V1));
        assert_eq!(
            paths(&plan(&layout(), &listing, &mounts, &policy())),
            vec![
                ("/data/appmounts/old".into(), Reason::UnmountedVolume),
                ("/data/appmounts/exactly".into(), Reason::UnmountedVolume),
            ]
        );
    }

    #[test]
    fn a_volume_published_empty_counts_as_mounted() {
        // An empty publish is a bind mount of `mapped`, not an overlay.
        let listing = Listing {
            app_mounts: vec![Entry::new("empty", 30 * DAY)],
            ..Listing::default()
        };
        let mounts = table(
            "40 22 253:1 /data/appmounts/empty/mapped /data/appmounts/empty/mapped rw - ext4 /dev/vda rw\n",
        );
        assert!(plan(&layout(), &listing, &mounts, &policy()).is_empty());
    }

    #[test]
    fn a_volume_whose_overlay_lives_on_only_at_the_kubelet_target_is_kept() {
        let listing = Listing {
            app_mounts: vec![Entry::new("csi-1", 30 * DAY)],
            ..Listing::default()
        };
        let only_target: String = overlay("csi-1", "dk", "c1", V1).lines().skip(1).collect();
        let mounts = table(&format!("{only_target}\n"));
        assert!(plan(&layout(), &listing, &mounts, &policy()).is_empty());
    }

    #[test]
    fn a_zero_age_removes_unmounted_volumes_at_once() {
        let listing = Listing {
            app_mounts: vec![Entry::new("fresh", Duration::ZERO)],
            ..Listing::default()
        };
        let policy = Policy {
            max_unmounted_volume_age: Duration::ZERO,
            ..policy()
        };
        assert_eq!(plan(&layout(), &listing, &table(""), &policy).len(), 1);
    }

    #[test]
    fn staging_in_use_is_kept_leftovers_go() {
        let listing = Listing {
            staging: vec![
                Entry::new("v-1-live", Duration::ZERO),
                Entry::new("v-2-crashed", DAY),
            ],
            ..Listing::default()
        };
        let policy = Policy {
            active_staging: BTreeSet::from(["v-1-live".to_owned()]),
            ..policy()
        };
        assert_eq!(
            paths(&plan(&layout(), &listing, &table(""), &policy)),
            vec![("/data/staging/v-2-crashed".into(), Reason::StaleStaging)]
        );
    }

    #[test]
    fn a_mount_made_after_the_plan_stops_the_deletion() {
        let listing = Listing {
            codemodules: vec![Entry::new(V1, DAY)],
            app_mounts: vec![Entry::new("csi-1", 30 * DAY)],
            ..Listing::default()
        };
        let removals = plan(&layout(), &listing, &table(""), &policy());
        assert_eq!(removals.len(), 2);
        let fresh = table(&overlay("csi-1", "dk", "c1", V1));
        assert!(removals.iter().all(|r| !r.still_safe(&fresh)));
        assert!(removals.iter().all(|r| r.still_safe(&table(""))));
    }

    #[test]
    fn the_age_setting() {
        assert_eq!(max_unmounted_volume_age(None), (7 * DAY, None));
        assert_eq!(max_unmounted_volume_age(Some("")), (7 * DAY, None));
        assert_eq!(max_unmounted_volume_age(Some("3")), (3 * DAY, None));
        assert_eq!(max_unmounted_volume_age(Some(" 3 ")), (3 * DAY, None));
        assert_eq!(max_unmounted_volume_age(Some("0")), (Duration::ZERO, None));
        assert_eq!(max_unmounted_volume_age(Some("-5")), (Duration::ZERO, None));
        let (age, warning) = max_unmounted_volume_age(Some("7d"));
        assert_eq!(age, 7 * DAY);
        assert!(warning.unwrap().contains("\"7d\""));
    }

    #[test]
    fn reasons_have_labels() {
        for (reason, label) in [
            (Reason::UnusedVersion, "unused_version"),
            (Reason::UnusedConfigLayer, "unused_config_layer"),
            (Reason::OrphanDynakube, "orphan_dynakube"),
            (Reason::UnmountedVolume, "unmounted_volume"),
            (Reason::StaleStaging, "stale_staging"),
        ] {
            assert_eq!(reason.label(), label);
        }
    }
}
