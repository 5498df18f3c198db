//! The storage migration of the DynaKube CRD: after our CRD replaced one that stored DynaKubes at other
//! versions (the reference's v1beta5, v1beta6, ...), every DynaKube is rewritten so that the API server
//! encodes it at our storage version, then `status.storedVersions` is trimmed to that version. Until then
//! a later CRD could not drop those versions. The decision is [`pure_api::storage_migration::decide`].
//!
//! It runs on the leader only, next to (never inside) the DynaKube reconciles, and is idempotent: an
//! operator stopped half-way leaves `storedVersions` untouched, and the next leader rewrites again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use pure_api::crd::DYNAKUBE_STORAGE_VERSION;
use pure_api::dynakube::DynaKube;
use pure_api::storage_migration::{StorageMigration, decide};
use pure_webhook_certificates::DYNAKUBE_CRD_NAME;
use serde_json::json;
use tokio::sync::Notify;

use crate::error::{ReconcileError as Error, kube_error};
use crate::metrics::Metrics;
use crate::wake::{AbortOnDrop, spawn_trigger};

/// Objects listed per page.
const PAGE: u32 = 100;
/// Attempts at one object whose resourceVersion keeps changing under us.
const CONFLICT_ATTEMPTS: usize = 5;
/// First retry after a failed migration; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry interval after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A CRD change comes with others (the caBundle, the API server's status); one pass covers them.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Check again now and then even without a CRD event.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The CRD does not exist.
    NoCrd,
    /// Nothing to do, or not yet (see [`StorageMigration`]).
    Skipped(StorageMigration),
    /// Every DynaKube was rewritten and `storedVersions` set to our storage version.
    Migrated {
        /// The versions that were listed besides ours.
        stale: Vec<String>,
        /// DynaKubes rewritten.
        rewritten: usize,
    },
}

/// Runs the migration whenever the DynaKube CRD changes, until `shutdown` completes.
pub async fn run(client: Client, metrics: Metrics, shutdown: impl Future<Output = ()>) {
    let trigger = Arc::new(Notify::new());
    let _abort_watch = AbortOnDrop::from(spawn_trigger(
        Api::<PartialObjectMeta<CustomResourceDefinition>>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={DYNAKUBE_CRD_NAME}")),
        "CustomResourceDefinition",
        "storage migration",
        trigger.clone(),
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    loop {
        let result = tokio::select! {
            () = &mut shutdown => break,
            result = migrate_once(&client, &metrics) => result,
        };
        let wait = match result {
            Ok(outcome) => {
                backoff = MIN_BACKOFF;
                match outcome {
                    Outcome::Migrated { stale, rewritten } => tracing::info!(
                        crd = DYNAKUBE_CRD_NAME,
                        ?stale,
                        rewritten,
                        "storage migration done: every DynaKube is stored at {DYNAKUBE_STORAGE_VERSION}"
                    ),
                    Outcome::Skipped(StorageMigration::NotOurCrd { storage }) => tracing::info!(
                        crd = DYNAKUBE_CRD_NAME,
                        ?storage,
                        "storage migration waits: the CRD does not store {DYNAKUBE_STORAGE_VERSION}; apply \
                         this operator's CRDs"
                    ),
                    other => tracing::debug!(?other, "storage migration: nothing to do"),
                }
                MAX_WAIT
            }
            Err(err) => {
                tracing::error!("storage migration of {DYNAKUBE_CRD_NAME}: {err}");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        if !crate::wake::next_pass(&mut shutdown, &trigger, wait, DEBOUNCE).await {
            break;
        }
    }
}

/// One pass: reads the CRD, and when [`decide`] says so rewrites every DynaKube and trims
/// `status.storedVersions`.
pub async fn migrate_once(client: &Client, metrics: &Metrics) -> Result<Outcome, Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let Some(crd) = crds.get_opt(DYNAKUBE_CRD_NAME).await.map_err(kube_error(format!(
        "read CustomResourceDefinition {DYNAKUBE_CRD_NAME}"
    )))?
    else {
        return Ok(Outcome::NoCrd);
    };
    let (stale, stored_versions) = match decide(&crd) {
        StorageMigration::Needed {
            stale,
            stored_versions,
        } => (stale, stored_versions),
        other => return Ok(Outcome::Skipped(other)),
    };
    tracing::info!(
        crd = DYNAKUBE_CRD_NAME,
        ?stale,
        "storage migration: rewriting every DynaKube at {DYNAKUBE_STORAGE_VERSION}"
    );
    let rewritten = rewrite_all(client, metrics).await?;
    // Guarded by the CRD's resourceVersion: a CRD changed meanwhile (another storage version) is read again.
    let patch = json!({
        "metadata": { "resourceVersion": crd.resource_version() },
        "status": { "storedVersions": stored_versions },
    });
    crds.patch_status(DYNAKUBE_CRD_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_error(format!(
            "set status.storedVersions of CustomResourceDefinition {DYNAKUBE_CRD_NAME} to {stored_versions:?} \
             (a conflict means the CRD changed; the migration runs again)"
        )))?;
    metrics.storage_migration_done();
    Ok(Outcome::Migrated { stale, rewritten })
}

/// Rewrites every DynaKube in every namespace, a page at a time. Returns how many.
async fn rewrite_all(client: &Client, metrics: &Metrics) -> Result<usize, Error> {
    let all: Api<DynaKube> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    let mut rewritten = 0;
    loop {
        let page = all.list_metadata(&params).await.map_err(kube_error(
            "list DynaKubes in all namespaces for the storage migration",
        ))?;
        for object in &page.items {
            let namespace = object.namespace().unwrap_or_default();
            let api: Api<DynaKube> = Api::namespaced(client.clone(), &namespace);
            if rewrite(&api, &namespace, &object.name_any(), object.resource_version()).await? {
                rewritten += 1;
                metrics.storage_migration_rewrote();
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(rewritten),
        }
    }
}

/// Rewrites one DynaKube with a patch that changes nothing but makes the API server encode it again at the
/// storage version. The resourceVersion makes a concurrent write a conflict, retried with the new one.
/// Returns `false` when the object is gone.
async fn rewrite(
    api: &Api<DynaKube>,
    namespace: &str,
    name: &str,
    mut resource_version: Option<String>,
) -> Result<bool, Error> {
    let what = || {
        format!(
            "rewrite DynaKube {namespace}/{name} at {DYNAKUBE_STORAGE_VERSION} (storage migration; it is \
             retried, and runs again with the next CRD change or operator start)"
        )
    };
    let mut attempt = 1;
    loop {
        let patch = json!({ "metadata": { "resourceVersion": resource_version } });
        let err = match api
            .patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        match &err {
            kube::Error::Api(status) if status.code == 404 => return Ok(false),
            // Written meanwhile by someone else: that write may predate our CRD, so rewrite again.
            kube::Error::Api(status) if status.code == 409 && attempt < CONFLICT_ATTEMPTS => {
                attempt += 1;
                match api.get_metadata_opt(name).await.map_err(kube_error(what()))? {
                    Some(current) => resource_version = current.resource_version(),
                    None => return Ok(false),
                }
            }
            _ => return Err(kube_error(what())(err)),
        }
    }
}
