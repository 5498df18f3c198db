//! The metadata-enrichment part of the injection (spec §3.7): the endpoint Secret and a shared directory
//! mounted into every application container, the workload for the init container. Every step adds only
//! what is missing.

use k8s_openapi::api::core::v1::{Container, Pod};
use pure_desired::pod::{
    add_mount_if_absent, add_volume_if_absent, empty_dir_volume, literal_env, mount, secret_volume,
};

use crate::Workload;
use crate::names::{
    ENRICHMENT_ENDPOINT_PATH, ENRICHMENT_PATH, VOLUME_DATA_INGEST_ENDPOINT, VOLUME_DATA_INGEST_ENRICHMENT,
    env,
};

/// Injects enrichment into a pod that has none yet: the volumes, the init container's part and every
/// application container.
pub(crate) fn inject_pod(pod: &mut Pod, init: &mut Container, workload: &Workload) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    for volume in [
        secret_volume(
            VOLUME_DATA_INGEST_ENDPOINT,
            pure_api::dynakube::names::ENRICHMENT_SECRET,
        ),
        empty_dir_volume(VOLUME_DATA_INGEST_ENRICHMENT),
    ] {
        add_volume_if_absent(&mut spec.volumes, volume);
    }
    init.env.get_or_insert_with(Vec::new).extend([
        literal_env(env::DT_WORKLOAD_KIND, &workload.kind),
        literal_env(env::DT_WORKLOAD_NAME, &workload.name),
        literal_env(env::DATA_INGEST_INJECTED, "true"),
    ]);
    add_mount_if_absent(
        &mut init.volume_mounts,
        mount(VOLUME_DATA_INGEST_ENRICHMENT, ENRICHMENT_PATH, false),
    );
    for container in &mut spec.containers {
        inject_container(container);
    }
}

/// Mounts the enrichment directory and the endpoint Secret into one application container.
pub(crate) fn inject_container(container: &mut Container) {
    add_mount_if_absent(
        &mut container.volume_mounts,
        mount(VOLUME_DATA_INGEST_ENRICHMENT, ENRICHMENT_PATH, false),
    );
    add_mount_if_absent(
        &mut container.volume_mounts,
        mount(VOLUME_DATA_INGEST_ENDPOINT, ENRICHMENT_ENDPOINT_PATH, false),
    );
}
