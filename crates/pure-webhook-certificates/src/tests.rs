#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::oid_registry;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn policy() -> CertificatePolicy {
    CertificatePolicy::for_namespace("dynatrace")
}

fn fresh() -> CertificatePlan {
    plan(&BTreeMap::new(), t0(), &policy()).unwrap()
}

fn der(pem: &[u8]) -> Vec<u8> {
    parse_pem_certificate(pem).unwrap()
}

fn expiry(data: &BTreeMap<String, Vec<u8>>, key: &str) -> SystemTime {
    not_after(&data[key]).unwrap()
}

/// Verifies `tls.crt` of `data` as a TLS client trusting `bundle` would, for `name` at `now`.
fn verify(bundle: &[u8], server_pem: &[u8], name: &str, now: SystemTime) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let leaf = CertificateDer::from_pem_slice(server_pem).unwrap();
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap()),
        )
        .map(drop)
}

#[test]
fn a_fresh_secret_gets_a_ca_and_a_serving_certificate_as_the_reference_issues_them() {
    let plan = fresh();
    assert!(plan.ca_renewed && plan.server_renewed && plan.changed());
    let keys: Vec<_> = plan.data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY],
        "no ca.crt.old without a previous CA"
    );

    let ca_der = der(&plan.data[CA_CERT]);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    ca.verify_signature(None).unwrap();
    assert_eq!(
        ca.subject().to_string(),
        "C=AT, ST=UA, L=Linz, O=Dynatrace, OU=OneAgent Webhook, CN=dynatrace-webhook.dynatrace.svc"
    );
    assert_eq!(
        ca.public_key().algorithm.algorithm,
        oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert_eq!(
        expiry(&plan.data, CA_CERT),
        t0() + DEFAULT_CA_VALIDITY,
        "365 days"
    );

    let server_der = der(&plan.data[TLS_CERT]);
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).unwrap();
    assert!(!server.is_ca());
    server.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(
        server.public_key().algorithm.algorithm,
        oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let (names, ips) = subject_alt_names(&server).unwrap();
    assert_eq!(
        names,
        BTreeSet::from(["dynatrace-webhook.dynatrace.svc".to_owned()])
    );
    assert!(ips.is_empty());
    assert_eq!(
        expiry(&plan.data, TLS_CERT),
        t0() + DEFAULT_SERVER_VALIDITY,
        "7 days"
    );
    assert_eq!(
        plan.next_renewal,
        t0() + DEFAULT_SERVER_VALIDITY - DEFAULT_RENEW_BEFORE,
        "the serving certificate enters its window first"
    );
    verify(
        &ca_bundle(&plan.data),
        &plan.data[TLS_CERT],
        "dynatrace-webhook.dynatrace.svc",
        t0(),
    )
    .unwrap();
}

#[test]
fn valid_certificates_are_returned_byte_for_byte() {
    let first = fresh();
    for later in [Duration::ZERO, HOUR, 6 * DAY + 11 * HOUR] {
        let again = plan(&first.data, t0() + later, &policy()).unwrap();
        assert!(!again.changed(), "{later:?}: {:?}", again.reasons);
        assert_eq!(again.data, first.data);
        assert_eq!(again.next_renewal, first.next_renewal);
        assert!(again.reasons.is_empty());
    }
}

#[test]
fn the_serving_certificate_is_renewed_when_it_enters_the_renewal_window() {
    let first = fresh();
    let window = first.next_renewal;
    let before = plan(&first.data, window - Duration::from_secs(1), &policy()).unwrap();
    assert!(!before.changed());

    let renewed = plan(&first.data, window, &policy()).unwrap();
    assert!(renewed.server_renewed && !renewed.ca_renewed);
    assert_eq!(renewed.data[CA_CERT], first.data[CA_CERT]);
    assert_eq!(renewed.data[CA_KEY], first.data[CA_KEY]);
    assert_ne!(renewed.data[TLS_CERT], first.data[TLS_CERT]);
    assert_ne!(renewed.data[TLS_KEY], first.data[TLS_KEY]);
    assert!(!renewed.data.contains_key(CA_CERT_OLD));
    assert_eq!(expiry(&renewed.data, TLS_CERT), window + DEFAULT_SERVER_VALIDITY);
    assert!(
        renewed.reasons.iter().any(|r| r.contains("renewal window")),
        "{:?}",
        renewed.reasons
    );
    // Signed by the kept CA, which rcgen re-read from the Secret.
    verify(
        &ca_bundle(&renewed.data),
        &renewed.data[TLS_CERT],
        "dynatrace-webhook.dynatrace.svc",
        window,
    )
    .unwrap();
}

#[test]
fn the_ca_is_renewed_near_its_expiry_and_the_previous_one_stays_trusted() {
    let policy = CertificatePolicy {
        ca_validity: 10 * DAY,
        ..policy()
    };
    let first = plan(&BTreeMap::new(), t0(), &policy).unwrap();
    // The serving certificate never outlives its CA: renewed on day 6.5 it ends with the CA on day 10.
    let day6 = plan(&first.data, first.next_renewal, &policy).unwrap();
    assert!(day6.server_renewed && !day6.ca_renewed);
    assert_eq!(expiry(&day6.data, TLS_CERT), expiry(&day6.data, CA_CERT));
    assert_eq!(day6.next_renewal, t0() + 10 * DAY - DEFAULT_RENEW_BEFORE);

    let rotation = day6.next_renewal;
    let rotated = plan(&day6.data, rotation, &policy).unwrap();
    assert!(rotated.ca_renewed && rotated.server_renewed);
    assert_eq!(
        rotated.data[CA_CERT_OLD], day6.data[CA_CERT],
        "the previous CA moved to ca.crt.old"
    );
    assert_ne!(rotated.data[CA_CERT], day6.data[CA_CERT]);
    assert_ne!(rotated.data[CA_KEY], day6.data[CA_KEY]);
    assert_ne!(rotated.data[TLS_CERT], day6.data[TLS_CERT]);

    let bundle = ca_bundle(&rotated.data);
    let mut expected = rotated.data[CA_CERT].clone();
    expected.extend_from_slice(&day6.data[CA_CERT]);
    assert_eq!(bundle, expected, "ca.crt, then ca.crt.old");
    let name = "dynatrace-webhook.dynatrace.svc";
    verify(&bundle, &rotated.data[TLS_CERT], name, rotation).unwrap();
    // A webhook still serving the previous certificate stays trusted while the new one spreads.
    verify(&bundle, &day6.data[TLS_CERT], name, rotation).unwrap();
    // But the previous CA alone does not trust the new certificate.
    verify(&day6.data[CA_CERT], &rotated.data[TLS_CERT], name, rotation).unwrap_err();

    // The next rotation drops the oldest CA.
    let again = plan(&rotated.data, rotated.next_renewal + 10 * DAY, &policy).unwrap();
    assert!(again.ca_renewed);
    assert_eq!(again.data[CA_CERT_OLD], rotated.data[CA_CERT]);
}

#[test]
fn garbage_is_replaced_and_unrelated_keys_are_kept() {
    let garbage = BTreeMap::from([
        (CA_CERT.to_owned(), b"garbage".to_vec()),
        (CA_KEY.to_owned(), b"garbage".to_vec()),
        (CA_CERT_OLD.to_owned(), b"older garbage".to_vec()),
        (
            TLS_CERT.to_owned(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
        ),
        (TLS_KEY.to_owned(), vec![0xff, 0xfe]),
        ("unrelated".to_owned(), b"kept".to_vec()),
    ]);
    let plan = plan(&garbage, t0(), &policy()).unwrap();
    assert!(plan.ca_renewed && plan.server_renewed);
    assert!(
        !plan.data.contains_key(CA_CERT_OLD),
        "garbage is not worth trusting"
    );
    assert_eq!(plan.data["unrelated"], b"kept");
    verify(
        &ca_bundle(&plan.data),
        &plan.data[TLS_CERT],
        "dynatrace-webhook.dynatrace.svc",
        t0(),
    )
    .unwrap();

    // Garbage in the serving certificate or its key only renews the serving certificate.
    for key in [TLS_CERT, TLS_KEY] {
        let mut broken = fresh().data;
        broken.insert(key.to_owned(), b"garbage".to_vec());
        let fixed = super::plan(&broken, t0(), &policy()).unwrap();
        assert!(fixed.server_renewed && !fixed.ca_renewed, "{key}");
        assert_eq!(fixed.data[CA_CERT], broken[CA_CERT]);
    }
    // Missing keys count as garbage.
    for key in [CA_CERT, CA_KEY] {
        let mut broken = fresh().data;
        broken.remove(key);
        let fixed = super::plan(&broken, t0(), &policy()).unwrap();
        assert!(fixed.ca_renewed && fixed.server_renewed, "{key}");
    }
}

#[test]
fn mismatched_keys_and_foreign_signers_are_renewed() {
    let ours = fresh();
    let theirs = fresh();

    // A serving key of another pair.
    let mut data = ours.data.clone();
    data.insert(TLS_KEY.to_owned(), theirs.data[TLS_KEY].clone());
    let plan1 = plan(&data, t0(), &policy()).unwrap();
    assert!(plan1.server_renewed && !plan1.ca_renewed);

    // A serving certificate of another CA.
    let mut data = ours.data.clone();
    data.insert(TLS_CERT.to_owned(), theirs.data[TLS_CERT].clone());
    data.insert(TLS_KEY.to_owned(), theirs.data[TLS_KEY].clone());
    let plan2 = plan(&data, t0(), &policy()).unwrap();
    assert!(plan2.server_renewed && !plan2.ca_renewed);
    assert!(
        plan2
            .reasons
            .iter()
            .any(|r| r.contains("not signed by the current CA"))
    );

    // A CA key of another CA.
    let mut data = ours.data.clone();
    data.insert(CA_KEY.to_owned(), theirs.data[CA_KEY].clone());
    let plan3 = plan(&data, t0(), &policy()).unwrap();
    assert!(plan3.ca_renewed && plan3.server_renewed);

    // A serving certificate where the CA should be: not a CA.
    let mut data = ours.data.clone();
    data.insert(CA_CERT.to_owned(), ours.data[TLS_CERT].clone());
    data.insert(CA_KEY.to_owned(), ours.data[TLS_KEY].clone());
    let plan4 = plan(&data, t0(), &policy()).unwrap();
    assert!(plan4.ca_renewed);
    assert!(
        plan4.reasons.iter().any(|r| r.contains("not a CA")),
        "{:?}",
        plan4.reasons
    );
}

#[test]
fn different_names_renew_the_serving_certificate_and_a_new_namespace_the_ca() {
    let first = fresh();
    let with_ip = CertificatePolicy {
        extra_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        extra_dns_names: vec!["localhost".into()],
        ..policy()
    };
    let plan1 = plan(&first.data, t0(), &with_ip).unwrap();
    assert!(plan1.server_renewed && !plan1.ca_renewed);
    let server_der = der(&plan1.data[TLS_CERT]);
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).unwrap();
    let (names, ips) = subject_alt_names(&server).unwrap();
    assert_eq!(
        names,
        BTreeSet::from([
            "dynatrace-webhook.dynatrace.svc".to_owned(),
            "localhost".to_owned()
        ])
    );
    assert_eq!(ips, BTreeSet::from([IpAddr::V4(Ipv4Addr::LOCALHOST)]));
    verify(&ca_bundle(&plan1.data), &plan1.data[TLS_CERT], "127.0.0.1", t0()).unwrap();
    assert!(!plan(&plan1.data, t0(), &with_ip).unwrap().changed());

    // Dropping a name renews too: SANs must equal the policy, not merely contain it.
    let plan2 = plan(&plan1.data, t0(), &policy()).unwrap();
    assert!(plan2.server_renewed && !plan2.ca_renewed);

    let elsewhere = CertificatePolicy::for_namespace("other");
    let plan3 = plan(&first.data, t0(), &elsewhere).unwrap();
    assert!(plan3.ca_renewed && plan3.server_renewed);
    verify(
        &ca_bundle(&plan3.data),
        &plan3.data[TLS_CERT],
        "dynatrace-webhook.other.svc",
        t0(),
    )
    .unwrap();
}

#[test]
fn certificates_from_the_future_are_renewed() {
    let first = fresh();
    let plan = plan(&first.data, t0() - HOUR, &policy()).unwrap();
    assert!(plan.ca_renewed && plan.server_renewed);
    // One minute of skew is tolerated.
    let skewed = super::plan(&first.data, t0() - Duration::from_secs(50), &policy()).unwrap();
    assert!(!skewed.changed());
}

#[test]
fn short_validities_rotate_without_renewing_on_every_call() {
    let policy = CertificatePolicy {
        ca_validity: Duration::from_secs(40),
        server_validity: Duration::from_secs(20),
        renew_before: Duration::from_secs(12),
        ..policy()
    };
    let mut data = BTreeMap::new();
    let mut now = t0();
    let mut ca_rotations = 0;
    for _ in 0..12 {
        let plan = plan(&data, now, &policy).unwrap();
        assert!(plan.next_renewal > now, "no renewal loop at {now:?}");
        assert!(!super::plan(&plan.data, now, &policy).unwrap().changed());
        ca_rotations += usize::from(plan.ca_renewed);
        verify(
            &ca_bundle(&plan.data),
            &plan.data[TLS_CERT],
            "dynatrace-webhook.dynatrace.svc",
            now,
        )
        .unwrap();
        data = plan.data;
        now = plan.next_renewal;
    }
    assert!(ca_rotations >= 3, "{ca_rotations}");
}

#[test]
fn unusable_policies_are_rejected() {
    for (policy, what) in [
        (
            CertificatePolicy {
                renew_before: DEFAULT_SERVER_VALIDITY,
                ..policy()
            },
            "server validity",
        ),
        (
            CertificatePolicy {
                ca_validity: HOUR,
                ..policy()
            },
            "CA validity",
        ),
        (
            CertificatePolicy {
                renew_before: Duration::ZERO,
                ..policy()
            },
            "renew_before is zero",
        ),
        (
            CertificatePolicy {
                service_dns_name: String::new(),
                ..policy()
            },
            "empty",
        ),
    ] {
        let err = plan(&BTreeMap::new(), t0(), &policy).unwrap_err();
        assert!(matches!(err, CertError::Policy(_)), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    let err = plan(&BTreeMap::new(), UNIX_EPOCH - HOUR, &policy()).unwrap_err();
    assert!(matches!(err, CertError::Clock(_)), "{err}");
}

#[test]
fn the_bundle_separates_certificates_with_newlines() {
    let data = BTreeMap::from([
        (CA_CERT.to_owned(), b"new".to_vec()),
        (CA_CERT_OLD.to_owned(), b"old\n".to_vec()),
    ]);
    assert_eq!(ca_bundle(&data), b"new\nold\n");
    assert_eq!(ca_bundle(&BTreeMap::new()), b"");
    assert!(not_after(b"garbage").is_none());
}
