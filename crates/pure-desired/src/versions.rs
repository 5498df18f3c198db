//! Which OneAgent and code-module version to run, and when to look it up again (spec §7.3): the
//! decisions of the version reconciler, over the DynaKube and its current version status. The caller does
//! the lookups the plan asks for and writes `source` and `lastProbeTimestamp` after a successful one.
//!
//! Sources, highest precedence first: `custom-image` (spec image), `public-registry` (feature flag; not
//! for classicFullStack OneAgents), `custom-version` (spec version), `tenant-registry`.

use std::fmt;

use pure_api::dynakube::v1beta1::VersionStatus;
use pure_api::dynakube::{DynaKube, Mode};
use url::Url;

use crate::DesiredError;
use crate::throttle::{next_request_at, request_due, unix_seconds};
use crate::version::{image_tag, is_downgrade};

/// Where a version comes from (`status.<component>.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionSource {
    /// The environment's registry (OneAgent) or installer API (code modules), latest version.
    TenantRegistry,
    /// An image from the spec.
    CustomImage,
    /// A version pinned in the spec, from the environment.
    CustomVersion,
    /// Dynatrace's public registry (`public-registry` feature flag).
    PublicRegistry,
}

impl VersionSource {
    /// The value in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantRegistry => "tenant-registry",
            Self::CustomImage => "custom-image",
            Self::CustomVersion => "custom-version",
            Self::PublicRegistry => "public-registry",
        }
    }
}

impl fmt::Display for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the version reconciler decided for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionPlan {
    /// The source that applies now; written to the status after a successful lookup.
    pub source: VersionSource,
    /// What to look up.
    pub lookup: Lookup,
    /// Whether to look it up now.
    pub decision: Decision,
    /// The version a new automatic version must not be older than (check with [`accept_version`]); `None`
    /// when no downgrade check applies.
    pub downgrade_baseline: Option<String>,
}

impl VersionPlan {
    /// Whether to look the version up now.
    pub fn should_probe(&self) -> bool {
        matches!(self.decision, Decision::Probe(_))
    }
}

/// What to look up for a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Resolve the digest of this image: `imageID` = `<image>@<digest>` (the image as is when it already
    /// has a digest, or when the lookup fails); `version` is cleared.
    CustomImage {
        /// The image from the spec.
        image: String,
    },
    /// Ask the environment for the latest image in the public registry
    /// (`GET /v1/deployment/image/agent/{oneAgent|codeModules}/latest`), then resolve its digest.
    PublicRegistry,
    /// OneAgent from the environment's registry: `imageID` = `image` (a tag, not a digest), `version` =
    /// the image's `com.dynatrace.build-version` label. The version to check against the downgrade
    /// baseline is `version`, or without one the environment's latest (`unix/default/latest/metainfo`).
    TenantRegistry {
        /// `<apiUrl host>/linux/oneagent:<latest | a.b.c>`.
        image: String,
        /// The pinned version, if any.
        version: Option<String>,
    },
    /// Code modules from the environment: `version` = the pinned version, or the environment's latest
    /// (`unix/paas/latest/metainfo`); no image.
    TenantVersion {
        /// The pinned version, if any.
        version: Option<String>,
    },
}

/// Whether to look the version up now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Look it up.
    Probe(ProbeReason),
    /// Keep the status as it is.
    Skip(SkipReason),
}

/// Why a version is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeReason {
    /// The status records no source yet.
    FirstProbe,
    /// The source changed (for example an image was added to the spec).
    SourceChanged {
        /// The source in the status.
        from: String,
    },
    /// The spec's image is not the one in the status (compared by prefix, since a digest may have been
    /// appended).
    CustomImageChanged {
        /// `imageID` in the status.
        from: String,
    },
    /// The pinned code-module version is not the one in the status.
    CustomVersionChanged {
        /// `version` in the status.
        from: Option<String>,
    },
    /// The OneAgent image from the environment's registry is not the one in the status: another pinned
    /// version, or another `apiUrl`.
    TenantImageChanged {
        /// `imageID` in the status.
        from: Option<String>,
    },
    /// The last lookup is older than the API request threshold, or its time is unknown.
    Outdated,
}

/// Why a version is not looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `autoUpdate: false` and a version from this source is already in the status.
    AutoUpdateDisabled,
    /// The last lookup is more recent than the API request threshold.
    RecentlyProbed {
        /// When the next lookup is due (unix seconds).
        next_probe_at: i64,
    },
}

/// A version that an automatic update must not move to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not moving OneAgent from version {current} to the older {target}: automatic updates never downgrade; \
     to run {target} anyway, pin it with `version` in the DynaKube's spec.oneAgent.<mode> (with the \
     public-registry feature flag, set `image` instead)"
)]
pub struct VersionRejected {
    /// The version that runs.
    pub current: String,
    /// The older version that was offered.
    pub target: String,
}

/// Whether an automatic update may move from `current` (the plan's `downgrade_baseline`) to `target`:
/// anything but a downgrade is accepted, including versions that cannot be compared (see
/// [`is_downgrade`]).
pub fn accept_version(current: Option<&str>, target: &str) -> Result<(), VersionRejected> {
    match current {
        Some(current) if is_downgrade(current, target) => Err(VersionRejected {
            current: current.to_owned(),
            target: target.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The environment's image registry: the `apiUrl` host, with its port when the URL gives one other than
/// the scheme's default (the reference keeps the port as written).
pub fn tenant_registry(api_url: &str) -> Option<String> {
    let url = Url::parse(api_url).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// The OneAgent image in the environment's registry: `<registry>/linux/oneagent:<latest | a.b.c>`.
pub fn tenant_oneagent_image(api_url: &str, version: Option<&str>) -> Option<String> {
    Some(format!(
        "{}/linux/oneagent:{}",
        tenant_registry(api_url)?,
        image_tag(version)
    ))
}

/// The plan for the OneAgent version (`status.oneAgent`), or `None` when the DynaKube runs no OneAgent
/// DaemonSet (the caller clears the status). `current` is `status.oneAgent`'s version part; `now` is unix
/// seconds.
///
/// Differences from the reference, each to avoid a stuck or wrong update:
/// - `autoUpdate: false` only skips the periodic lookup. The reference also skips after a change of the
///   pinned version, so a new pin never took effect.
/// - A pinned version is not checked for downgrades (pinning is how a downgrade is forced); the reference
///   rejects the first lookup after switching from the tenant registry to a lower pin.
/// - The custom image matches the status when equal or followed by `@<digest>`, not by plain prefix
///   (`repo:1.2` is not `repo:1.20@...`).
/// - For the tenant registry the image in the status is compared with the one the spec gives, so a new
///   `apiUrl` or pin is picked up without waiting for the threshold.
pub fn oneagent_version_plan(
    dynakube: &DynaKube,
    current: Option<&VersionStatus>,
    now: i64,
    threshold_minutes: u32,
) -> Result<Option<VersionPlan>, DesiredError> {
    if !dynakube.needs_one_agent() {
        return Ok(None);
    }
    let Some(host) = dynakube.host_spec() else {
        return Ok(None);
    };
    let custom_image = non_empty(host.image.as_deref());
    let custom_version = non_empty(host.version.as_deref());
    let public =
        dynakube.feature_flags().public_registry() && dynakube.mode() != Some(Mode::ClassicFullStack);

    let (source, lookup) = if let Some(image) = custom_image {
        (
            VersionSource::CustomImage,
            Lookup::CustomImage {
                image: image.to_owned(),
            },
        )
    } else if public {
        (VersionSource::PublicRegistry, Lookup::PublicRegistry)
    } else {
        let image = tenant_oneagent_image(&dynakube.spec.api_url, custom_version).ok_or_else(|| {
            DesiredError::InvalidApiUrl {
                dynakube: dynakube.metadata.name.clone().unwrap_or_default(),
                api_url: dynakube.spec.api_url.clone(),
            }
        })?;
        let source = if custom_version.is_some() {
            VersionSource::CustomVersion
        } else {
            VersionSource::TenantRegistry
        };
        let version = custom_version.map(str::to_owned);
        (source, Lookup::TenantRegistry { image, version })
    };

    let changed = |status: &VersionStatus| match &lookup {
        Lookup::CustomImage { image } => custom_image_changed(status, image),
        Lookup::TenantRegistry { image, .. } if status.image_id.as_deref() != Some(image.as_str()) => {
            Some(ProbeReason::TenantImageChanged {
                from: status.image_id.clone(),
            })
        }
        _ => None,
    };
    let auto_update = dynakube.should_auto_update_one_agent();
    let decision = decide(current, source, changed, auto_update, now, threshold_minutes);

    // Only automatic versions are checked, against the last automatic one; a pin may go anywhere.
    let downgrade_baseline = match source {
        VersionSource::TenantRegistry | VersionSource::PublicRegistry => current
            .filter(|s| non_empty(s.image_id.as_deref()).is_some())
            .and_then(|s| match s.source.as_deref() {
                Some("tenant-registry") => s.version.clone(),
                Some("public-registry") => s.image_id.as_deref().and_then(reference_tag).map(str::to_owned),
                _ => None,
            })
            .filter(|v| !v.is_empty()),
        VersionSource::CustomImage | VersionSource::CustomVersion => None,
    };

    Ok(Some(VersionPlan {
        source,
        lookup,
        decision,
        downgrade_baseline,
    }))
}

/// The plan for the code-module version (`status.codeModules`), or `None` when no code modules are
/// injected (the caller clears the status). Code modules always follow the latest version (no
/// `autoUpdate`) and are never checked for downgrades. `codeModulesImage` counts for cloudNativeFullStack,
/// and for applicationMonitoring with the CSI driver (without it, pods download the code modules
/// themselves); a pinned version exists only in applicationMonitoring.
pub fn codemodules_version_plan(
    dynakube: &DynaKube,
    current: Option<&VersionStatus>,
    now: i64,
    threshold_minutes: u32,
) -> Option<VersionPlan> {
    if !dynakube.needs_app_injection() {
        return None;
    }
    let app = dynakube.app_injection_spec()?;
    let mode = dynakube.mode()?;
    let custom_image = non_empty(app.code_modules_image.as_deref())
        .filter(|_| mode == Mode::CloudNativeFullStack || dynakube.csi_driver_use().may_use());
    let custom_version = dynakube
        .spec
        .one_agent
        .as_ref()
        .and_then(|o| o.application_monitoring.as_ref())
        .and_then(|a| non_empty(a.version.as_deref()));

    let (source, lookup) = if let Some(image) = custom_image {
        (
            VersionSource::CustomImage,
            Lookup::CustomImage {
                image: image.to_owned(),
            },
        )
    } else if dynakube.feature_flags().public_registry() {
        (VersionSource::PublicRegistry, Lookup::PublicRegistry)
    } else if let Some(version) = custom_version {
        let version = Some(version.to_owned());
        (VersionSource::CustomVersion, Lookup::TenantVersion { version })
    } else {
        (
            VersionSource::TenantRegistry,
            Lookup::TenantVersion { version: None },
        )
    };

    let changed = |status: &VersionStatus| match &lookup {
        Lookup::CustomImage { image } => custom_image_changed(status, image),
        Lookup::TenantVersion {
            version: Some(pinned),
        } if status.version.as_ref() != Some(pinned) => Some(ProbeReason::CustomVersionChanged {
            from: status.version.clone(),
        }),
        _ => None,
    };
    let decision = decide(current, source, changed, true, now, threshold_minutes);
    Some(VersionPlan {
        source,
        lookup,
        decision,
        downgrade_baseline: None,
    })
}

/// The reasons in the reference's order: no status, another source, a changed spec value, then the
/// throttle. `autoUpdate: false` skips only the periodic lookup, and never for a custom image (its digest
/// may move).
fn decide(
    current: Option<&VersionStatus>,
    source: VersionSource,
    changed: impl FnOnce(&VersionStatus) -> Option<ProbeReason>,
    auto_update: bool,
    now: i64,
    threshold_minutes: u32,
) -> Decision {
    let Some((status, recorded)) =
        current.and_then(|s| non_empty(s.source.as_deref()).map(|recorded| (s, recorded)))
    else {
        return Decision::Probe(ProbeReason::FirstProbe);
    };
    if recorded != source.as_str() {
        return Decision::Probe(ProbeReason::SourceChanged {
            from: recorded.to_owned(),
        });
    }
    if let Some(reason) = changed(status) {
        return Decision::Probe(reason);
    }
    if !auto_update && source != VersionSource::CustomImage {
        return Decision::Skip(SkipReason::AutoUpdateDisabled);
    }
    let last = status.last_probe_timestamp.as_ref().map(unix_seconds);
    match last {
        Some(last) if !request_due(Some(last), now, threshold_minutes) => {
            Decision::Skip(SkipReason::RecentlyProbed {
                next_probe_at: next_request_at(last, threshold_minutes),
            })
        }
        _ => Decision::Probe(ProbeReason::Outdated),
    }
}

/// Whether the spec's custom image is not the one in the status: the status holds the image as given, or
/// with `@<digest>` appended.
fn custom_image_changed(status: &VersionStatus, image: &str) -> Option<ProbeReason> {
    let image_id = status.image_id.as_deref().unwrap_or_default();
    let same = image_id
        .strip_prefix(image)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'));
    (!same).then(|| ProbeReason::CustomImageChanged {
        from: image_id.to_owned(),
    })
}

/// The tag of an image reference (`repo:tag` or `repo:tag@digest`), if it has one. A colon before the
/// last `/` is a registry port, not a tag.
fn reference_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag).filter(|t| !t.is_empty())
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;
    const THRESHOLD: u32 = 15;
    const TENANT_LATEST: &str = "abc12345.live.dynatrace.com/linux/oneagent:latest";
    const V_OLD: &str = "1.276.0.20230801-000000";
    const V_NEW: &str = "1.277.0.20230914-094321";

    fn dk(one_agent: serde_json::Value, annotations: serde_json::Value) -> DynaKube {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace", "annotations": annotations },
            "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "oneAgent": one_agent }
        }))
        .unwrap()
    }

    fn mode(mode: &str, settings: serde_json::Value) -> DynaKube {
        dk(json!({ mode: settings }), json!({}))
    }

    fn public(mut dk: DynaKube) -> DynaKube {
        dk.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("feature.dynatrace.com/public-registry".into(), "true".into());
        dk
    }

    fn status(
        source: &str,
        image: Option<&str>,
        version: Option<&str>,
        probed: Option<i64>,
    ) -> VersionStatus {
        VersionStatus {
            source: Some(source.into()),
            image_id: image.map(Into::into),
            version: version.map(Into::into),
            last_probe_timestamp: probed.map(|s| Time(Timestamp::from_second(s).unwrap())),
        }
    }

    fn oneagent(dk: &DynaKube, current: Option<&VersionStatus>) -> VersionPlan {
        oneagent_version_plan(dk, current, NOW, THRESHOLD)
            .unwrap()
            .unwrap()
    }

    fn codemodules(dk: &DynaKube, current: Option<&VersionStatus>) -> VersionPlan {
        codemodules_version_plan(dk, current, NOW, THRESHOLD).unwrap()
    }

    fn recent() -> Decision {
        Decision::Skip(SkipReason::RecentlyProbed {
            next_probe_at: NOW - 60 + 15 * 60,
        })
    }

    #[test]
    fn oneagent_sources_by_precedence() {
        let tenant = |version: Option<&str>| Lookup::TenantRegistry {
            image: format!(
                "abc12345.live.dynatrace.com/linux/oneagent:{}",
                image_tag(version)
            ),
            version: version.map(Into::into),
        };
        let custom = Lookup::CustomImage {
            image: "registry.example/oneagent:1.2".into(),
        };
        for m in ["classicFullStack", "hostMonitoring", "cloudNativeFullStack"] {
            let image_and_version = json!({ "image": "registry.example/oneagent:1.2", "version": V_NEW });
            for (dk, source, lookup) in [
                (mode(m, json!({})), VersionSource::TenantRegistry, tenant(None)),
                (
                    mode(m, json!({ "version": "" })),
                    VersionSource::TenantRegistry,
                    tenant(None),
                ),
                (
                    mode(m, json!({ "version": V_NEW })),
                    VersionSource::CustomVersion,
                    tenant(Some(V_NEW)),
                ),
                (
                    mode(m, image_and_version.clone()),
                    VersionSource::CustomImage,
                    custom.clone(),
                ),
                (
                    public(mode(m, image_and_version)),
                    VersionSource::CustomImage,
                    custom.clone(),
                ),
            ] {
                let plan = oneagent(&dk, None);
                assert_eq!((plan.source, &plan.lookup), (source, &lookup), "{m}");
                assert_eq!(plan.decision, Decision::Probe(ProbeReason::FirstProbe));
            }
        }
        // The public registry wins over a pinned version, except for classicFullStack.
        for m in ["hostMonitoring", "cloudNativeFullStack"] {
            let plan = oneagent(&public(mode(m, json!({ "version": V_NEW }))), None);
            assert_eq!(
                (plan.source, plan.lookup),
                (VersionSource::PublicRegistry, Lookup::PublicRegistry)
            );
        }
        let classic = oneagent(
            &public(mode("classicFullStack", json!({ "version": V_NEW }))),
            None,
        );
        assert_eq!(classic.source, VersionSource::CustomVersion);
        let classic = oneagent(&public(mode("classicFullStack", json!({}))), None);
        assert_eq!(
            (classic.source, classic.lookup),
            (VersionSource::TenantRegistry, tenant(None))
        );
    }

    #[test]
    fn no_oneagent_plan_without_a_host_mode() {
        for dk in [
            mode("applicationMonitoring", json!({})),
            dk(json!({}), json!({})),
            dk(json!({ "classicFullStack": {}, "hostMonitoring": {} }), json!({})),
        ] {
            assert_eq!(oneagent_version_plan(&dk, None, NOW, THRESHOLD), Ok(None));
        }
    }

    #[test]
    fn tenant_image_needs_a_valid_api_url() {
        let mut bad = mode("classicFullStack", json!({}));
        bad.spec.api_url = "not a url".into();
        let err = oneagent_version_plan(&bad, None, NOW, THRESHOLD).unwrap_err();
        assert_eq!(
            err,
            DesiredError::InvalidApiUrl {
                dynakube: "dk".into(),
                api_url: "not a url".into()
            }
        );
        assert!(err.to_string().contains("spec.apiUrl"), "{err}");
        // A custom image or the public registry do not need it.
        let mut custom = mode("hostMonitoring", json!({ "image": "repo/oa:1" }));
        custom.spec.api_url = "not a url".into();
        assert!(oneagent_version_plan(&custom, None, NOW, THRESHOLD).is_ok());
        let mut public = public(mode("hostMonitoring", json!({})));
        public.spec.api_url = "not a url".into();
        assert!(oneagent_version_plan(&public, None, NOW, THRESHOLD).is_ok());
    }

    #[test]
    fn tenant_registry_host_keeps_an_explicit_port() {
        assert_eq!(
            tenant_registry("https://abc12345.live.dynatrace.com/api").as_deref(),
            Some("abc12345.live.dynatrace.com")
        );
        assert_eq!(
            tenant_registry("https://managed.example:9999/e/env/api").as_deref(),
            Some("managed.example:9999")
        );
        assert_eq!(
            tenant_registry("https://managed.example:443/e/env/api").as_deref(),
            Some("managed.example")
        );
        assert_eq!(
            tenant_registry("https://[::1]:8443/api").as_deref(),
            Some("[::1]:8443")
        );
        assert_eq!(tenant_registry("abc12345.live.dynatrace.com/api"), None);
        assert_eq!(tenant_registry(""), None);
        assert_eq!(
            tenant_oneagent_image("https://managed.example:9999/e/env/api", Some(V_NEW)).as_deref(),
            Some("managed.example:9999/linux/oneagent:1.277.0")
        );
    }

    #[test]
    fn probe_or_skip_table_for_the_tenant_registry() {
        let auto = mode("hostMonitoring", json!({}));
        let manual = mode("hostMonitoring", json!({ "autoUpdate": false }));
        let outdated = Decision::Probe(ProbeReason::Outdated);
        let cases: Vec<(&str, &DynaKube, Option<VersionStatus>, Decision)> = vec![
            ("no status", &auto, None, Decision::Probe(ProbeReason::FirstProbe)),
            (
                "empty status",
                &auto,
                Some(VersionStatus::default()),
                Decision::Probe(ProbeReason::FirstProbe),
            ),
            (
                "empty status, autoUpdate off",
                &manual,
                Some(VersionStatus::default()),
                Decision::Probe(ProbeReason::FirstProbe),
            ),
            (
                "source changed",
                &auto,
                Some(status("custom-image", Some("repo/oa:1"), None, Some(NOW))),
                Decision::Probe(ProbeReason::SourceChanged {
                    from: "custom-image".into(),
                }),
            ),
            (
                "source changed, autoUpdate off",
                &manual,
                Some(status("public-registry", Some("pub/oa:1.2.3"), None, Some(NOW))),
                Decision::Probe(ProbeReason::SourceChanged {
                    from: "public-registry".into(),
                }),
            ),
            (
                "recent",
                &auto,
                Some(status(
                    "tenant-registry",
                    Some(TENANT_LATEST),
                    Some(V_NEW),
                    Some(NOW - 60),
                )),
                recent(),
            ),
            (
                "just under the threshold",
                &auto,
                Some(status(
                    "tenant-registry",
                    Some(TENANT_LATEST),
                    Some(V_NEW),
                    Some(NOW - 899),
                )),
                Decision::Skip(SkipReason::RecentlyProbed {
                    next_probe_at: NOW + 1,
                }),
            ),
            (
                "outdated",
                &auto,
                Some(status(
                    "tenant-registry",
                    Some(TENANT_LATEST),
                    Some(V_NEW),
                    Some(NOW - 900),
                )),
                outdated.clone(),
            ),
            (
                "no time stamp",
                &auto,
                Some(status("tenant-registry", Some(TENANT_LATEST), Some(V_NEW), None)),
                outdated.clone(),
            ),
            (
                "time stamp from the future",
                &auto,
                Some(status(
                    "tenant-registry",
                    Some(TENANT_LATEST),
                    Some(V_NEW),
                    Some(NOW + 60),
                )),
                outdated,
            ),
            (
                "autoUpdate off, outdated",
                &manual,
                Some(status(
                    "tenant-registry",
                    Some(TENANT_LATEST),
                    Some(V_NEW),
                    Some(NOW - 9000),
                )),
                Decision::Skip(SkipReason::AutoUpdateDisabled),
            ),
            (
                "autoUpdate off, recent",
                &manual,
                Some(status(
                    "tenant-registry",
                    Some(TENANT_LATEST),
                    Some(V_NEW),
                    Some(NOW - 60),
                )),
                Decision::Skip(SkipReason::AutoUpdateDisabled),
            ),
            (
                "image from another apiUrl",
                &auto,
                Some(status(
                    "tenant-registry",
                    Some("old.live.dynatrace.com/linux/oneagent:latest"),
                    Some(V_NEW),
                    Some(NOW),
                )),
                Decision::Probe(ProbeReason::TenantImageChanged {
                    from: Some("old.live.dynatrace.com/linux/oneagent:latest".into()),
                }),
            ),
            (
                "no image in the status, autoUpdate off",
                &manual,
                Some(status("tenant-registry", None, None, Some(NOW))),
                Decision::Probe(ProbeReason::TenantImageChanged { from: None }),
            ),
        ];
        for (name, dk, current, expected) in cases {
            assert_eq!(oneagent(dk, current.as_ref()).decision, expected, "{name}");
            assert_eq!(
                oneagent(dk, current.as_ref()).should_probe(),
                matches!(expected, Decision::Probe(_))
            );
        }
    }

    #[test]
    fn pinned_version_changes_are_probed_even_without_auto_update() {
        for auto_update in [true, false] {
            let dk = mode(
                "classicFullStack",
                json!({ "version": V_NEW, "autoUpdate": auto_update }),
            );
            let old_image = "abc12345.live.dynatrace.com/linux/oneagent:1.276.0";
            let pinned_old = status("custom-version", Some(old_image), Some(V_OLD), Some(NOW - 60));
            assert_eq!(
                oneagent(&dk, Some(&pinned_old)).decision,
                Decision::Probe(ProbeReason::TenantImageChanged {
                    from: Some(old_image.into())
                }),
                "autoUpdate {auto_update}"
            );
            // Same pin: only the throttle (or autoUpdate) decides. The image label may carry a longer
            // version than the pin; the image tag is what counts.
            let new_image = "abc12345.live.dynatrace.com/linux/oneagent:1.277.0";
            let pinned_new = status("custom-version", Some(new_image), Some(V_NEW), Some(NOW - 60));
            let expected = if auto_update {
                recent()
            } else {
                Decision::Skip(SkipReason::AutoUpdateDisabled)
            };
            assert_eq!(oneagent(&dk, Some(&pinned_new)).decision, expected);
            let short_pin = mode(
                "classicFullStack",
                json!({ "version": "1.277.0", "autoUpdate": auto_update }),
            );
            assert_eq!(oneagent(&short_pin, Some(&pinned_new)).decision, expected);
        }
    }

    #[test]
    fn custom_image_compared_by_prefix_up_to_a_digest() {
        let dk = mode(
            "cloudNativeFullStack",
            json!({ "image": "repo/oa:1.2", "autoUpdate": false }),
        );
        for (image_id, changed) in [
            ("repo/oa:1.2", false),
            ("repo/oa:1.2@sha256:abcd", false),
            ("repo/oa:1.20@sha256:abcd", true),
            ("repo/oa:1.1@sha256:abcd", true),
            ("other/oa:1.2", true),
            ("", true),
        ] {
            let current = status("custom-image", Some(image_id), None, Some(NOW - 60));
            let expected = if changed {
                Decision::Probe(ProbeReason::CustomImageChanged {
                    from: image_id.into(),
                })
            } else {
                // autoUpdate does not apply: the digest behind a tag may move.
                recent()
            };
            assert_eq!(oneagent(&dk, Some(&current)).decision, expected, "{image_id}");
        }
        let outdated = status(
            "custom-image",
            Some("repo/oa:1.2@sha256:abcd"),
            None,
            Some(NOW - 900),
        );
        assert_eq!(
            oneagent(&dk, Some(&outdated)).decision,
            Decision::Probe(ProbeReason::Outdated)
        );
        let no_image = VersionStatus {
            image_id: None,
            ..status("custom-image", None, None, Some(NOW))
        };
        assert!(oneagent(&dk, Some(&no_image)).should_probe());
    }

    #[test]
    fn public_registry_decisions() {
        let dk = public(mode("cloudNativeFullStack", json!({})));
        let current = status(
            "public-registry",
            Some("pub/oa:1.277.0@sha256:ab"),
            None,
            Some(NOW - 60),
        );
        assert_eq!(oneagent(&dk, Some(&current)).decision, recent());
        let current = status(
            "public-registry",
            Some("pub/oa:1.277.0@sha256:ab"),
            None,
            Some(NOW - 900),
        );
        assert_eq!(
            oneagent(&dk, Some(&current)).decision,
            Decision::Probe(ProbeReason::Outdated)
        );
        let manual = public(mode("cloudNativeFullStack", json!({ "autoUpdate": false })));
        assert_eq!(
            oneagent(&manual, Some(&current)).decision,
            Decision::Skip(SkipReason::AutoUpdateDisabled)
        );
    }

    #[test]
    fn downgrade_baseline_only_for_automatic_sources() {
        let tenant = mode("hostMonitoring", json!({}));
        let pub_dk = public(mode("hostMonitoring", json!({})));
        let pinned = mode("hostMonitoring", json!({ "version": V_OLD }));
        let custom = mode("hostMonitoring", json!({ "image": "repo/oa:1" }));
        let from_tenant = status("tenant-registry", Some(TENANT_LATEST), Some(V_NEW), Some(NOW));
        let from_public = status(
            "public-registry",
            Some("reg:5000/pub/oa:1.277.0@sha256:ab"),
            None,
            Some(NOW),
        );
        let from_pin = status(
            "custom-version",
            Some("x/linux/oneagent:1.280.0"),
            Some("1.280.0.x"),
            Some(NOW),
        );
        let no_image = status("tenant-registry", None, Some(V_NEW), Some(NOW));
        for (dk, current, expected) in [
            (&tenant, None, None),
            (&tenant, Some(&from_tenant), Some(V_NEW)),
            (&tenant, Some(&from_public), Some("1.277.0")),
            (&tenant, Some(&from_pin), None),
            (&tenant, Some(&no_image), None),
            (&pub_dk, Some(&from_tenant), Some(V_NEW)),
            (&pub_dk, Some(&from_public), Some("1.277.0")),
            (&pinned, Some(&from_tenant), None),
            (&custom, Some(&from_tenant), None),
        ] {
            assert_eq!(
                oneagent(dk, current).downgrade_baseline.as_deref(),
                expected,
                "{:?} from {:?}",
                oneagent(dk, current).source,
                current.and_then(|c| c.source.as_deref())
            );
        }
    }

    #[test]
    fn reference_tags() {
        assert_eq!(reference_tag("repo/oa:1.2.3"), Some("1.2.3"));
        assert_eq!(reference_tag("reg:5000/repo/oa:1.2.3@sha256:ab"), Some("1.2.3"));
        assert_eq!(reference_tag("reg:5000/repo/oa"), None);
        assert_eq!(reference_tag("reg:5000/repo/oa@sha256:ab"), None);
        assert_eq!(reference_tag("repo/oa:"), None);
    }

    #[test]
    fn accept_version_rejects_only_downgrades() {
        assert_eq!(accept_version(None, V_OLD), Ok(()));
        assert_eq!(accept_version(Some(V_OLD), V_NEW), Ok(()));
        assert_eq!(accept_version(Some(V_NEW), V_NEW), Ok(()));
        assert_eq!(
            accept_version(Some("garbage"), V_OLD),
            Ok(()),
            "incomparable versions pass"
        );
        let err = accept_version(Some(V_NEW), V_OLD).unwrap_err();
        assert_eq!(
            err,
            VersionRejected {
                current: V_NEW.into(),
                target: V_OLD.into()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("from version {V_NEW} to the older {V_OLD}")),
            "{message}"
        );
        assert!(message.contains("pin it with `version`"), "{message}");
    }

    #[test]
    fn codemodules_sources_by_precedence() {
        let image = "repo/codemodules:1.2";
        let custom = Lookup::CustomImage { image: image.into() };
        let latest = Lookup::TenantVersion { version: None };
        let cases = [
            (
                mode("cloudNativeFullStack", json!({})),
                VersionSource::TenantRegistry,
                latest.clone(),
            ),
            (
                mode(
                    "cloudNativeFullStack",
                    json!({ "codeModulesImage": image, "version": V_NEW }),
                ),
                VersionSource::CustomImage,
                custom.clone(),
            ),
            (
                // The host version is the OneAgent's, not the code modules'.
                mode("cloudNativeFullStack", json!({ "version": V_NEW })),
                VersionSource::TenantRegistry,
                latest.clone(),
            ),
            (
                public(mode("cloudNativeFullStack", json!({ "codeModulesImage": image }))),
                VersionSource::CustomImage,
                custom.clone(),
            ),
            (
                public(mode("cloudNativeFullStack", json!({}))),
                VersionSource::PublicRegistry,
                Lookup::PublicRegistry,
            ),
            (
                mode("applicationMonitoring", json!({})),
                VersionSource::TenantRegistry,
                latest.clone(),
            ),
            (
                mode("applicationMonitoring", json!({ "version": V_NEW })),
                VersionSource::CustomVersion,
                Lookup::TenantVersion {
                    version: Some(V_NEW.into()),
                },
            ),
            (
                public(mode("applicationMonitoring", json!({ "version": V_NEW }))),
                VersionSource::PublicRegistry,
                Lookup::PublicRegistry,
            ),
            (
                // Never the CSI driver: the image is not used, pods download code modules themselves.
                mode(
                    "applicationMonitoring",
                    json!({ "codeModulesImage": image, "useCSIDriver": false }),
                ),
                VersionSource::TenantRegistry,
                latest,
            ),
            (
                // Without useCSIDriver the installed CSI driver serves the image.
                mode("applicationMonitoring", json!({ "codeModulesImage": image })),
                VersionSource::CustomImage,
                custom.clone(),
            ),
            (
                mode(
                    "applicationMonitoring",
                    json!({ "codeModulesImage": image, "useCSIDriver": true }),
                ),
                VersionSource::CustomImage,
                custom,
            ),
        ];
        for (dk, source, lookup) in cases {
            let plan = codemodules(&dk, None);
            assert_eq!(
                (plan.source, &plan.lookup),
                (source, &lookup),
                "{:?}",
                dk.spec.one_agent
            );
            assert_eq!(plan.decision, Decision::Probe(ProbeReason::FirstProbe));
            assert_eq!(plan.downgrade_baseline, None);
        }
    }

    #[test]
    fn no_codemodules_plan_without_injection() {
        for dk in [
            mode("classicFullStack", json!({})),
            mode("hostMonitoring", json!({})),
            dk(json!({}), json!({})),
        ] {
            assert_eq!(codemodules_version_plan(&dk, None, NOW, THRESHOLD), None);
        }
    }

    #[test]
    fn codemodules_decisions() {
        let pinned = mode("applicationMonitoring", json!({ "version": V_NEW }));
        let same = status("custom-version", None, Some(V_NEW), Some(NOW - 60));
        assert_eq!(codemodules(&pinned, Some(&same)).decision, recent());
        let other = status("custom-version", None, Some(V_OLD), Some(NOW - 60));
        assert_eq!(
            codemodules(&pinned, Some(&other)).decision,
            Decision::Probe(ProbeReason::CustomVersionChanged {
                from: Some(V_OLD.into())
            })
        );
        let latest = mode("applicationMonitoring", json!({}));
        assert_eq!(
            codemodules(&latest, Some(&other)).decision,
            Decision::Probe(ProbeReason::SourceChanged {
                from: "custom-version".into()
            })
        );
        let tenant = status("tenant-registry", None, Some(V_OLD), Some(NOW - 60));
        assert_eq!(codemodules(&latest, Some(&tenant)).decision, recent());
        let tenant_old = status("tenant-registry", None, Some(V_OLD), Some(NOW - 900));
        assert_eq!(
            codemodules(&latest, Some(&tenant_old)).decision,
            Decision::Probe(ProbeReason::Outdated)
        );

        let image = mode("cloudNativeFullStack", json!({ "codeModulesImage": "repo/cm:2" }));
        let with_digest = status("custom-image", Some("repo/cm:2@sha256:ff"), None, Some(NOW - 60));
        assert_eq!(codemodules(&image, Some(&with_digest)).decision, recent());
        let other_image = status("custom-image", Some("repo/cm:1@sha256:ff"), None, Some(NOW - 60));
        assert_eq!(
            codemodules(&image, Some(&other_image)).decision,
            Decision::Probe(ProbeReason::CustomImageChanged {
                from: "repo/cm:1@sha256:ff".into()
            })
        );
        // Code modules always auto-update: the OneAgent's autoUpdate does not apply.
        let manual = mode("cloudNativeFullStack", json!({ "autoUpdate": false }));
        assert_eq!(
            codemodules(&manual, Some(&tenant_old)).decision,
            Decision::Probe(ProbeReason::Outdated)
        );
    }

    #[test]
    fn source_names() {
        let names: Vec<String> = [
            VersionSource::TenantRegistry,
            VersionSource::CustomImage,
            VersionSource::CustomVersion,
            VersionSource::PublicRegistry,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "tenant-registry",
                "custom-image",
                "custom-version",
                "public-registry"
            ]
        );
    }
}
