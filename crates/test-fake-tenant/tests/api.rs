//! The tenant API over real HTTP on 127.0.0.1: every endpoint, authentication and errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use serde_json::json;
use test_fake_tenant::{Endpoint, Host};

#[tokio::test]
async fn metainfo_versions_and_images_follow_published_versions() {
    let tenant = start().await;
    let metainfo = installer(
        &tenant,
        "unix/paas/latest/metainfo?bitness=64&flavor=default&arch=x86",
    );
    let body = json(get(&metainfo, Some(TOKEN)).await, 200).await;
    assert_eq!(body, json!({"latestAgentVersion": LATEST}));

    let versions = installer(&tenant, "versions/unix/paas?flavor=default&arch=x86");
    let body = json(get(&versions, Some(TOKEN)).await, 200).await;
    assert_eq!(body, json!({"availableVersions": [OLDER, LATEST]}));

    let image = format!("{}/v1/deployment/image/agent/oneAgent/latest", tenant.api_url());
    let body = json(get(&image, Some(TOKEN)).await, 200).await;
    assert_eq!(
        body,
        json!({"source": "abc12345.live.dynatrace.com/linux/oneagent", "tag": LATEST})
    );

    tenant.publish_version("1.278.0.20231001-000000");
    let body = json(get(&metainfo, Some(TOKEN)).await, 200).await;
    assert_eq!(body["latestAgentVersion"], "1.278.0.20231001-000000");
    let body = json(get(&versions, Some(TOKEN)).await, 200).await;
    assert_eq!(body["availableVersions"].as_array().unwrap().len(), 3);
    let code_modules = format!(
        "{}/v1/deployment/image/agent/codeModules/latest",
        tenant.api_url()
    );
    let body = json(get(&code_modules, Some(TOKEN)).await, 200).await;
    assert_eq!(
        body,
        json!({"source": "abc12345.live.dynatrace.com/linux/codemodules", "tag": "1.278.0.20231001-000000"})
    );

    // Republishing an older version makes it the latest again; an unsafe one is ignored.
    tenant.publish_version(OLDER);
    tenant.publish_version("../evil");
    let body = json(get(&metainfo, Some(TOKEN)).await, 200).await;
    assert_eq!(body["latestAgentVersion"], OLDER);
    tenant.shutdown().await;
}

#[tokio::test]
async fn connection_info_per_network_zone() {
    let tenant = start().await;
    let url = installer(&tenant, "connectioninfo");
    let body = json(get(&url, Some(TOKEN)).await, 200).await;
    assert_eq!(
        body,
        json!({
            "tenantUUID": "abc12345",
            "tenantToken": "tenant-token-abc",
            "communicationEndpoints": [
                "https://abc12345.live.dynatrace.com:443/communication",
                "https://10.0.0.1:9999/communication"
            ],
            "formattedCommunicationEndpoints":
                "https://abc12345.live.dynatrace.com:443/communication;https://10.0.0.1:9999/communication",
        })
    );

    let zone = json(get(&format!("{url}?networkZone=zone-a"), Some(TOKEN)).await, 200).await;
    assert_eq!(
        zone["communicationEndpoints"],
        json!(["https://zone-a.example:443/communication"])
    );
    assert_eq!(
        zone["formattedCommunicationEndpoints"],
        "https://zone-a.example:443/communication"
    );

    let fallback = get(
        &format!("{url}?networkZone=nowhere&defaultZoneFallback=true"),
        Some(TOKEN),
    )
    .await;
    let fallback = json(fallback, 200).await;
    assert_eq!(fallback["communicationEndpoints"], body["communicationEndpoints"]);

    let unknown = get(&format!("{url}?networkZone=nowhere"), Some(TOKEN)).await;
    let message = expect_error(unknown, 400).await;
    assert!(
        message.contains("nowhere") && message.contains("zone-a"),
        "{message}"
    );
    tenant.shutdown().await;
}

#[tokio::test]
async fn process_module_config_with_revisions() {
    let tenant = start().await;
    let url = installer(&tenant, "processmoduleconfig");
    let body = json(get(&url, Some(TOKEN)).await, 200).await;
    assert_eq!(body["revision"], 1);
    assert_eq!(
        body["properties"][0],
        json!({"section": "general", "key": "storage", "value": "/var/lib/dynatrace/oneagent"})
    );
    assert_eq!(body["properties"].as_array().unwrap().len(), 2);

    let older = json(get(&format!("{url}?revision=0"), Some(TOKEN)).await, 200).await;
    assert_eq!(older, body);

    let current = get(&format!("{url}?revision=1"), Some(TOKEN)).await;
    assert_eq!(current.status().as_u16(), 304);
    assert!(current.bytes().await.unwrap().is_empty());

    let bad = get(&format!("{url}?revision=abc"), Some(TOKEN)).await;
    expect_error(bad, 400).await;
    tenant.shutdown().await;
}

/// The older lookup and the current one answer by the same rules; v2 adds the token's metadata.
#[tokio::test]
async fn token_lookup() {
    for (path, v2) in [("v1/tokens/lookup", false), ("v2/apiTokens/lookup", true)] {
        token_lookup_at(path, v2).await;
    }
}

async fn token_lookup_at(path: &str, v2: bool) {
    let tenant = start().await;
    let url = format!("{}/{path}", tenant.api_url());
    let lookup = |header: &str, body: String| {
        client(None)
            .post(&url)
            .header("Authorization", format!("Api-Token {header}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let body = json(
        lookup(TOKEN, json!({"token": TOKEN}).to_string()).await.unwrap(),
        200,
    )
    .await;
    assert_eq!(body["id"], "dt0c01.test");
    assert!(body["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(body["enabled"].as_bool(), v2.then_some(true), "{path}: {body}");
    let endpoint = if v2 {
        Endpoint::ApiTokensLookup
    } else {
        Endpoint::TokenLookup
    };
    assert_eq!(tenant.request_count(endpoint), 1, "{path}");
    assert_eq!(body["scopes"].as_array().unwrap().len(), 7);
    assert!(
        body["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("InstallerDownload"))
    );

    let body = json(
        lookup(EXPORT_ONLY, json!({"token": EXPORT_ONLY}).to_string())
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(body["id"], "dt0c01.EXPORT");
    assert_eq!(body["scopes"], json!(["DataExport"]));

    let unknown = lookup("dt0c01.nope", json!({"token": "dt0c01.nope"}).to_string());
    expect_error(unknown.await.unwrap(), 401).await;
    let unknown_body = lookup(TOKEN, json!({"token": "dt0c01.nope"}).to_string());
    expect_error(unknown_body.await.unwrap(), 401).await;
    let other = lookup(TOKEN, json!({"token": EXPORT_ONLY}).to_string());
    expect_error(other.await.unwrap(), 403).await;
    let bad = lookup(TOKEN, "{not json".into());
    let message = expect_error(bad.await.unwrap(), 400).await;
    assert!(message.contains("token"), "{message}");
    tenant.shutdown().await;
}

/// Settings 2.0 as the operator of today uses them: look the cluster's entity up, create its Kubernetes
/// settings object (which creates the entity), read it back by scope and as effective value; refused
/// objects say why; every call needs its scope.
#[tokio::test]
async fn settings_objects_entities_and_effective_values() {
    let tenant = start().await;
    let api = tenant.api_url();
    let entities = format!(
        "{api}/v2/entities?entitySelector=type(KUBERNETES_CLUSTER),kubernetesClusterId(kube-uid-1)&from=-365d"
    );
    let body = json(get(&entities, Some(TOKEN)).await, 200).await;
    assert_eq!(body["totalCount"], 0);

    let objects = format!("{api}/v2/settings/objects");
    let post = |token: &str, body: serde_json::Value, query: &str| {
        client(None)
            .post(format!("{objects}{query}"))
            .header("Authorization", format!("Api-Token {token}"))
            .json(&body)
            .send()
    };
    let cluster = json!([{
        "schemaId": "builtin:cloud.kubernetes", "scope": "environment",
        "value": { "enabled": true, "label": "prod", "clusterIdEnabled": true, "clusterId": "kube-uid-1" },
    }]);
    let dry = json(
        post(TOKEN, cluster.clone(), "?validateOnly=true").await.unwrap(),
        200,
    )
    .await;
    assert_eq!(dry, json!([{ "code": 200 }]));
    assert!(
        tenant.settings_objects().is_empty(),
        "validateOnly stores nothing"
    );
    let created = json(post(TOKEN, cluster.clone(), "").await.unwrap(), 200).await;
    let object_id = created[0]["objectId"].as_str().unwrap().to_owned();

    let body = json(get(&entities, Some(TOKEN)).await, 200).await;
    assert_eq!(body["totalCount"], 1, "{body}");
    let entity = body["entities"][0]["entityId"].as_str().unwrap().to_owned();
    assert!(entity.starts_with("KUBERNETES_CLUSTER-"), "{entity}");
    assert_eq!(body["entities"][0]["displayName"], "prod");

    let listed = json(
        get(
            &format!("{objects}?schemaIds=builtin:cloud.kubernetes&scopes={entity}"),
            Some(TOKEN),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(listed["items"][0]["objectId"], object_id.as_str());
    assert_eq!(listed["items"][0]["value"]["clusterId"], "kube-uid-1");
    let effective = json(
        get(
            &format!("{api}/v2/settings/effectiveValues?schemaIds=builtin:cloud.kubernetes&scope={entity}"),
            Some(TOKEN),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(effective["items"][0]["value"]["label"], "prod");

    // The same cluster again: refused with the reason, nothing stored.
    let again = post(TOKEN, cluster, "").await.unwrap();
    assert_eq!(again.status(), 400);
    let results: serde_json::Value = again.json().await.unwrap();
    let message = results[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("already monitored"), "{message}");
    assert_eq!(tenant.settings_objects().len(), 1);

    // Each call needs its scope.
    expect_error(get(&entities, Some(EXPORT_ONLY)).await, 403).await;
    expect_error(post(EXPORT_ONLY, json!([]), "").await.unwrap(), 403).await;
    let message = expect_error(
        get(&format!("{objects}?scopes=environment"), Some(TOKEN)).await,
        400,
    )
    .await;
    assert!(message.contains("schemaIds"), "{message}");
    assert_eq!(tenant.request_count(Endpoint::SettingsObjects), 6);
    tenant.shutdown().await;
}

#[tokio::test]
async fn hosts_and_events() {
    let tenant = start().await;
    let hosts_url = format!(
        "{}/v1/entity/infrastructure/hosts?includeDetails=false",
        tenant.api_url()
    );
    let body = json(get(&hosts_url, Some(EXPORT_ONLY)).await, 200).await;
    assert_eq!(body, json!([]));

    tenant.add_host(Host {
        entity_id: "HOST-1".into(),
        ip_addresses: vec!["10.0.0.5".into()],
        agent_version: LATEST.into(),
        network_zone: None,
    });
    tenant.add_host(Host {
        entity_id: "HOST-2".into(),
        ip_addresses: vec!["10.0.0.6".into(), "fd00::6".into()],
        agent_version: OLDER.into(),
        network_zone: Some("zone-a".into()),
    });
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = json(get(&hosts_url, Some(TOKEN)).await, 200).await;
    let hosts = body.as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["entityId"], "HOST-1");
    assert_eq!(hosts[0]["ipAddresses"], json!(["10.0.0.5"]));
    assert_eq!(
        hosts[0]["agentVersion"],
        json!({"major": 1, "minor": 277, "revision": 0, "timestamp": "20230914-094321"})
    );
    assert_eq!(hosts[0]["networkZoneId"], "default");
    assert_eq!(hosts[1]["networkZoneId"], "zone-a");
    assert!(hosts[0]["lastSeenTimestamp"].as_u64().unwrap() >= before);

    let events_url = format!("{}/v1/events", tenant.api_url());
    let post = |body: String| {
        client(None)
            .post(&events_url)
            .header("Authorization", format!("Api-Token {TOKEN}"))
            .body(body)
            .send()
    };
    let event = json!({"eventType": "MARKED_FOR_TERMINATION", "source": "OneAgent Operator",
        "attachRules": {"entityIds": ["HOST-1"]}});
    let body = json(post(event.to_string()).await.unwrap(), 201).await;
    assert_eq!(body, json!({"storedEventIds": ["1"]}));
    let body = json(post(event.to_string()).await.unwrap(), 201).await;
    assert_eq!(body, json!({"storedEventIds": ["2"]}));
    assert_eq!(tenant.events(), vec![event.clone(), event]);

    expect_error(post("nope".into()).await.unwrap(), 400).await;
    expect_error(post("{}".into()).await.unwrap(), 400).await;
    assert_eq!(tenant.events().len(), 2);
    tenant.shutdown().await;
}

#[tokio::test]
async fn authentication_and_scopes() {
    let tenant = start().await;
    let metainfo = installer(&tenant, "unix/default/latest/metainfo");
    let message = expect_error(get(&metainfo, None).await, 401).await;
    assert!(message.contains("Api-Token"), "{message}");
    expect_error(get(&metainfo, Some("dt0c01.wrong")).await, 401).await;
    let message = expect_error(get(&metainfo, Some(EXPORT_ONLY)).await, 403).await;
    assert!(message.contains("InstallerDownload"), "{message}");

    let bearer = client(None)
        .get(&metainfo)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    expect_error(bearer, 401).await;

    let mut config = config();
    config.tokens[0].scopes.retain(|s| s != "DataExport");
    let limited = start_with(config).await;
    let hosts = format!("{}/v1/entity/infrastructure/hosts", limited.api_url());
    let message = expect_error(get(&hosts, Some(TOKEN)).await, 403).await;
    assert!(message.contains("DataExport"), "{message}");
    for url in [
        installer(&tenant, "unix/paas/latest"),
        installer(&tenant, "connectioninfo"),
        installer(&tenant, "processmoduleconfig"),
        installer(&tenant, "versions/unix/paas"),
        format!("{}/v1/deployment/image/agent/oneAgent/latest", tenant.api_url()),
    ] {
        expect_error(get(&url, None).await, 401).await;
        expect_error(get(&url, Some(EXPORT_ONLY)).await, 403).await;
    }
    limited.shutdown().await;
    tenant.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_bad_parameters() {
    let tenant = start().await;
    for path in [
        "/api/v2/activeGateTokens",
        "/api/v1/deployment/installer/agent/unix/paas/latest/nothing",
        "/api/v1/deployment/image/agent/activeGate/latest",
        "/api",
        "/",
        "/admin/nothing",
    ] {
        let url = format!("{}{path}", tenant.base_url());
        expect_error(get(&url, Some(TOKEN)).await, 404).await;
    }
    // A known path with the wrong method.
    let wrong_method = client(None)
        .post(installer(&tenant, "unix/paas/latest/metainfo"))
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    expect_error(wrong_method, 404).await;

    let bad_os = get(&installer(&tenant, "beos/paas/latest/metainfo"), Some(TOKEN)).await;
    let message = expect_error(bad_os, 400).await;
    assert!(message.contains("beos") && message.contains("unix"), "{message}");
    let bad_type = get(&installer(&tenant, "unix/nope/latest"), Some(TOKEN)).await;
    expect_error(bad_type, 400).await;
    let unknown_version = get(&installer(&tenant, "unix/paas/version/9.9.9"), Some(TOKEN)).await;
    let message = expect_error(unknown_version, 404).await;
    assert!(message.contains("9.9.9") && message.contains(LATEST), "{message}");
    assert_eq!(tenant.request_count(Endpoint::Unknown), 6);
    assert_eq!(tenant.request_count(Endpoint::Admin), 1);
    tenant.shutdown().await;
}

#[tokio::test]
async fn request_log() {
    let tenant = start().await;
    let metainfo = installer(&tenant, "unix/paas/latest/metainfo?arch=x86&flavor=default");
    get(&metainfo, Some(TOKEN)).await;
    get(&metainfo, None).await;
    get(&installer(&tenant, "connectioninfo"), Some(EXPORT_ONLY)).await;

    let log = tenant.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].endpoint, Endpoint::Metainfo);
    assert_eq!(log[0].method, "GET");
    assert_eq!(
        log[0].path,
        "/api/v1/deployment/installer/agent/unix/paas/latest/metainfo"
    );
    assert_eq!(log[0].query, "arch=x86&flavor=default");
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].token.as_deref(), Some(TOKEN));
    assert_eq!((log[1].status, log[1].token.as_deref()), (401, None));
    assert_eq!(
        (log[2].endpoint, log[2].status, log[2].token.as_deref()),
        (Endpoint::ConnectionInfo, 403, Some(EXPORT_ONLY))
    );
    assert_eq!(tenant.request_count(Endpoint::Metainfo), 2);
    assert_eq!(tenant.request_count(Endpoint::Download), 0);

    tenant.clear_requests();
    assert!(tenant.requests().is_empty());
    assert_eq!(tenant.request_count(Endpoint::Metainfo), 0);
    tenant.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_port_and_removes_the_cache() {
    let tenant = start().await;
    let url = installer(&tenant, "unix/paas/latest");
    let response = get(&url, Some(TOKEN)).await;
    assert_eq!(response.status().as_u16(), 200);
    response.bytes().await.unwrap();
    let cache = tenant.cache_dir().to_owned();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let addr = tenant.addr();
    tenant.shutdown().await;
    assert!(!cache.exists(), "{} was not removed", cache.display());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn start_errors_say_what_is_wrong() {
    let mut config = config();
    config.versions.push("1.0/../x".into());
    let err = test_fake_tenant::FakeTenant::start(config, test_fake_tenant::Listen::Http)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("versions"), "{err}");

    let err = test_fake_tenant::FakeTenant::start(
        common::config(),
        test_fake_tenant::Listen::Https {
            cert_pem: "nope".into(),
            key_pem: "nope".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    let taken = start().await;
    let err = test_fake_tenant::FakeTenant::start_on(
        common::config(),
        test_fake_tenant::Listen::Http,
        taken.addr(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    taken.shutdown().await;
}
