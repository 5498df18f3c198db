//! The webhook's certificates as pure logic (no I/O): a self-signed CA and a serving certificate it signs,
//! kept in the Secret [`SECRET_NAME`], and when each of them must be renewed.
//!
//! [`plan`] takes the Secret's current data and the time and returns the data the Secret should hold. When
//! nothing needs renewal the data comes back byte-for-byte, so the caller can tell that nothing changed.
//! [`ca_bundle`] is what goes into every webhook's `caBundle`: the current CA followed by the previous one,
//! so that certificates of either CA are trusted while a rotation spreads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Name of the webhook's Deployment, Service and webhook configurations, as in the Helm chart.
pub const WEBHOOK_NAME: &str = "dynatrace-webhook";
/// Name of the Secret holding the certificates, in the operator's namespace.
pub const SECRET_NAME: &str = "dynatrace-webhook-certs";
/// Name of the DynaKube CRD, whose conversion webhook trusts the same CA.
pub const DYNAKUBE_CRD_NAME: &str = "dynakubes.dynatrace.com";

/// Secret key of the CA's private key (PKCS#8 PEM).
pub const CA_KEY: &str = "ca.key";
/// Secret key of the CA certificate (PEM).
pub const CA_CERT: &str = "ca.crt";
/// Secret key of the previous CA certificate (PEM), kept after a CA renewal.
pub const CA_CERT_OLD: &str = "ca.crt.old";
/// Secret key of the serving certificate's private key (PKCS#8 PEM).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the serving certificate (PEM).
pub const TLS_CERT: &str = "tls.crt";

/// Default validity of the CA.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default validity of the serving certificate.
pub const DEFAULT_SERVER_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default renewal window: a certificate is renewed when it expires within this time.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(12 * 3600);

/// notBefore is set this far in the past, so an API server whose clock is slightly behind accepts a new
/// certificate at once.
const BACKDATE_SECONDS: i64 = 60;

/// What the certificates must look like and how long they live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePolicy {
    /// DNS name of the webhook Service, `dynatrace-webhook.<namespace>.svc`: the CA's common name and the
    /// first SAN of the serving certificate.
    pub service_dns_name: String,
    /// Further DNS names of the serving certificate.
    pub extra_dns_names: Vec<String>,
    /// IP addresses of the serving certificate (local runs and tests that call the webhook by URL).
    pub extra_ips: Vec<IpAddr>,
    /// Validity of a new CA.
    pub ca_validity: Duration,
    /// Validity of a new serving certificate (never beyond the CA's).
    pub server_validity: Duration,
    /// A certificate that expires within this time is renewed.
    pub renew_before: Duration,
}

impl CertificatePolicy {
    /// The reference operator's policy for the webhook Service in `namespace`: CA 365 d, serving
    /// certificate 7 d, renewal 12 h before expiry.
    pub fn for_namespace(namespace: &str) -> Self {
        Self {
            service_dns_name: format!("{WEBHOOK_NAME}.{namespace}.svc"),
            extra_dns_names: Vec::new(),
            extra_ips: Vec::new(),
            ca_validity: DEFAULT_CA_VALIDITY,
            server_validity: DEFAULT_SERVER_VALIDITY,
            renew_before: DEFAULT_RENEW_BEFORE,
        }
    }

    /// The DNS names the serving certificate must have: the Service name first, then the extra names
    /// (without repetitions).
    pub fn dns_names(&self) -> Vec<String> {
        let mut names = vec![self.service_dns_name.clone()];
        for name in &self.extra_dns_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// Rejects policies that would renew on every call (a renewal window as long as a validity) or issue
    /// nameless certificates.
    pub fn check(&self) -> Result<(), CertError> {
        let policy = |reason: String| Err(CertError::Policy(reason));
        if self.service_dns_name.is_empty() {
            return policy("the service DNS name is empty".into());
        }
        if self.renew_before.is_zero() {
            return policy("renew_before is zero; certificates would be used up to their last second".into());
        }
        for (what, validity) in [("CA", self.ca_validity), ("server", self.server_validity)] {
            if validity <= self.renew_before {
                return policy(format!(
                    "the {what} validity ({validity:?}) is not longer than renew_before ({:?}); every \
                     reconcile would renew it",
                    self.renew_before
                ));
            }
        }
        Ok(())
    }
}

/// What the Secret should hold, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePlan {
    /// The Secret's data: equal to the input when nothing was renewed.
    pub data: BTreeMap<String, Vec<u8>>,
    /// A new CA was issued (the previous `ca.crt`, when there was one, moved to `ca.crt.old`).
    pub ca_renewed: bool,
    /// A new serving certificate was issued.
    pub server_renewed: bool,
    /// When the first of the two certificates enters its renewal window.
    pub next_renewal: SystemTime,
    /// Why each certificate was renewed, for the log.
    pub reasons: Vec<String>,
}

impl CertificatePlan {
    /// Whether `data` differs from the input.
    pub fn changed(&self) -> bool {
        self.ca_renewed || self.server_renewed
    }
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The policy cannot work.
    #[error("the webhook certificate policy is not usable: {0}; fix the validities or names")]
    Policy(String),
    /// The clock is outside what certificates can express.
    #[error("the system clock ({0:?}) cannot be expressed in a certificate; check the node's clock")]
    Clock(SystemTime),
    /// rcgen could not issue a certificate.
    #[error("cannot issue the webhook's {what}: {source}")]
    Issue {
        /// `CA` or `serving certificate`.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// The CA found in the data, usable for signing.
struct CurrentCa {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_after: i64,
}

/// Decides what the Secret must hold at `now`.
///
/// The CA is renewed when it is missing, unparsable, not a self-signed CA, not matching its key, named for
/// another Service, not valid yet or within `renew_before` of its expiry; the previous `ca.crt` then moves
/// to `ca.crt.old`. The serving certificate is renewed when the CA was, or when it is missing, unparsable,
/// not matching its key, not signed by the current CA, has other SANs than the policy, is not valid yet or
/// is within `renew_before` of its expiry. Keys other than the five certificate keys are kept.
pub fn plan(
    existing: &BTreeMap<String, Vec<u8>>,
    now: SystemTime,
    policy: &CertificatePolicy,
) -> Result<CertificatePlan, CertError> {
    policy.check()?;
    let now_secs = unix_seconds(now)?;
    let renew_before = seconds(policy.renew_before)?;
    let mut data = existing.clone();
    let mut reasons = Vec::new();

    let (ca, ca_renewed) = match current_ca(existing, now_secs, renew_before, policy) {
        Ok(ca) => (ca, false),
        Err(reason) => {
            reasons.push(format!("renewing the CA: {reason}"));
            let (ca, cert_pem, key_pem) = issue_ca(now_secs, policy)?;
            // Only a real certificate is worth trusting during the rotation; garbage is dropped.
            match existing.get(CA_CERT) {
                Some(previous) if parse_pem_certificate(previous).is_ok() => {
                    data.insert(CA_CERT_OLD.to_owned(), previous.clone());
                }
                _ => {
                    data.remove(CA_CERT_OLD);
                }
            }
            data.insert(CA_CERT.to_owned(), cert_pem.into_bytes());
            data.insert(CA_KEY.to_owned(), key_pem.into_bytes());
            (ca, true)
        }
    };

    let server_check = if ca_renewed {
        Err("the CA was renewed".to_owned())
    } else {
        current_server(existing, &ca, now_secs, renew_before, policy)
    };
    let (server_not_after, server_renewed) = match server_check {
        Ok(not_after) => (not_after, false),
        Err(reason) => {
            reasons.push(format!("renewing the serving certificate: {reason}"));
            let (not_after, cert_pem, key_pem) = issue_server(&ca, now_secs, policy)?;
            data.insert(TLS_CERT.to_owned(), cert_pem.into_bytes());
            data.insert(TLS_KEY.to_owned(), key_pem.into_bytes());
            (not_after, true)
        }
    };

    let first_window = ca.not_after.min(server_not_after).saturating_sub(renew_before);
    Ok(CertificatePlan {
        data,
        ca_renewed,
        server_renewed,
        next_renewal: UNIX_EPOCH + Duration::from_secs(u64::try_from(first_window).unwrap_or(0)),
        reasons,
    })
}

/// The caBundle for the webhook configurations and the CRD: `ca.crt` followed by `ca.crt.old` when
/// present, each ending in a newline.
pub fn ca_bundle(data: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut bundle = Vec::new();
    for key in [CA_CERT, CA_CERT_OLD] {
        if let Some(pem) = data.get(key).filter(|pem| !pem.is_empty()) {
            bundle.extend_from_slice(pem);
            if !pem.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }
    }
    bundle
}

/// The notAfter of the first certificate in `pem`, when it parses.
pub fn not_after(pem: &[u8]) -> Option<SystemTime> {
    let der = parse_pem_certificate(pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn unix_seconds(time: SystemTime) -> Result<i64, CertError> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or(CertError::Clock(time))
}

fn seconds(duration: Duration) -> Result<i64, CertError> {
    i64::try_from(duration.as_secs())
        .map_err(|_| CertError::Policy(format!("{duration:?} is too long for a certificate")))
}

fn datetime(secs: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| CertError::Clock(UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())))
}

/// The DER of the first PEM block, which must be a certificate.
fn parse_pem_certificate(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("no PEM certificate in it ({e})"))?;
    if block.label != "CERTIFICATE" {
        return Err(format!("a PEM {} block instead of a CERTIFICATE", block.label));
    }
    x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|e| format!("the certificate cannot be parsed ({e})"))?;
    Ok(block.contents)
}

fn key_pair(data: &BTreeMap<String, Vec<u8>>, key: &str) -> Result<KeyPair, String> {
    let pem = data.get(key).ok_or_else(|| format!("{key} is missing"))?;
    let pem = std::str::from_utf8(pem).map_err(|_| format!("{key} is not PEM text"))?;
    KeyPair::from_pem(pem).map_err(|e| format!("{key} holds no usable private key ({e})"))
}

/// Checks that the certificate is in force now and outside its renewal window.
fn check_validity(
    cert: &X509Certificate<'_>,
    what: &str,
    now: i64,
    renew_before: i64,
) -> Result<i64, String> {
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if not_before > now + BACKDATE_SECONDS {
        return Err(format!("{what} is not valid before {}", validity.not_before));
    }
    if now >= not_after.saturating_sub(renew_before) {
        return Err(format!(
            "{what} expires at {}, within the renewal window",
            validity.not_after
        ));
    }
    Ok(not_after)
}

fn current_ca(
    data: &BTreeMap<String, Vec<u8>>,
    now: i64,
    renew_before: i64,
    policy: &CertificatePolicy,
) -> Result<CurrentCa, String> {
    let pem = data.get(CA_CERT).ok_or_else(|| format!("{CA_CERT} is missing"))?;
    let der = parse_pem_certificate(pem).map_err(|e| format!("{CA_CERT} is unusable: {e}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("{CA_CERT} cannot be parsed ({e})"))?;
    if !cert.is_ca() {
        return Err(format!("{CA_CERT} is not a CA certificate"));
    }
    cert.verify_signature(None)
        .map_err(|e| format!("{CA_CERT} is not self-signed ({e})"))?;
    let key = key_pair(data, CA_KEY)?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(format!("{CA_KEY} does not belong to {CA_CERT}"));
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if common_name != Some(policy.service_dns_name.as_str()) {
        return Err(format!(
            "{CA_CERT} is named {common_name:?}, not {:?}",
            policy.service_dns_name
        ));
    }
    let not_after = check_validity(&cert, CA_CERT, now, renew_before)?;
    let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
        .map_err(|e| format!("{CA_CERT} cannot sign certificates ({e})"))?;
    Ok(CurrentCa {
        der,
        issuer,
        not_after,
    })
}

fn current_server(
    data: &BTreeMap<String, Vec<u8>>,
    ca: &CurrentCa,
    now: i64,
    renew_before: i64,
    policy: &CertificatePolicy,
) -> Result<i64, String> {
    let pem = data
        .get(TLS_CERT)
        .ok_or_else(|| format!("{TLS_CERT} is missing"))?;
    let der = parse_pem_certificate(pem).map_err(|e| format!("{TLS_CERT} is unusable: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("{TLS_CERT} cannot be parsed ({e})"))?;
    let key = key_pair(data, TLS_KEY)?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(format!("{TLS_KEY} does not belong to {TLS_CERT}"));
    }
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der)
        .map_err(|e| format!("{CA_CERT} cannot be parsed ({e})"))?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(format!("{TLS_CERT} is not signed by the current CA"));
    }
    let (dns_names, ips) = subject_alt_names(&cert)?;
    let wanted_names: BTreeSet<String> = policy.dns_names().into_iter().collect();
    let wanted_ips: BTreeSet<IpAddr> = policy.extra_ips.iter().copied().collect();
    if dns_names != wanted_names || ips != wanted_ips {
        return Err(format!(
            "{TLS_CERT} is for {dns_names:?} {ips:?}, the policy wants {wanted_names:?} {wanted_ips:?}"
        ));
    }
    check_validity(&cert, TLS_CERT, now, renew_before)
}

fn subject_alt_names(cert: &X509Certificate<'_>) -> Result<(BTreeSet<String>, BTreeSet<IpAddr>), String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("{TLS_CERT} has a broken subjectAltName ({e})"))?
        .ok_or_else(|| format!("{TLS_CERT} has no subjectAltName"))?;
    let (mut dns_names, mut ips) = (BTreeSet::new(), BTreeSet::new());
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => {
                dns_names.insert((*dns).to_owned());
            }
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                    _ => None,
                };
                ips.insert(ip.ok_or_else(|| format!("{TLS_CERT} has a malformed IP address SAN"))?);
            }
            other => return Err(format!("{TLS_CERT} has an unexpected SAN {other}")),
        }
    }
    Ok((dns_names, ips))
}

fn new_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Issue { what, source })
}

/// A new self-signed ECDSA P-256 CA with the reference's subject.
fn issue_ca(now: i64, policy: &CertificatePolicy) -> Result<(CurrentCa, String, String), CertError> {
    const WHAT: &str = "CA";
    let error = |source| CertError::Issue { what: WHAT, source };
    let key = new_key(WHAT)?;
    let not_after = now.saturating_add(seconds(policy.ca_validity)?);
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "AT");
    name.push(DnType::StateOrProvinceName, "UA");
    name.push(DnType::LocalityName, "Linz");
    name.push(DnType::OrganizationName, "Dynatrace");
    name.push(DnType::OrganizationalUnitName, "OneAgent Webhook");
    name.push(DnType::CommonName, policy.service_dns_name.as_str());
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = datetime(now - BACKDATE_SECONDS)?;
    params.not_after = datetime(not_after)?;
    let cert = params.self_signed(&key).map_err(error)?;
    let key_pem = key.serialize_pem();
    let cert_pem = cert.pem();
    let ca = CurrentCa {
        der: cert.der().to_vec(),
        issuer: Issuer::new(params, key),
        not_after,
    };
    Ok((ca, cert_pem, key_pem))
}

/// A new ECDSA P-256 serving certificate for the policy's names, signed by `ca`, expiring no later than it.
fn issue_server(
    ca: &CurrentCa,
    now: i64,
    policy: &CertificatePolicy,
) -> Result<(i64, String, String), CertError> {
    const WHAT: &str = "serving certificate";
    let error = |source| CertError::Issue { what: WHAT, source };
    let key = new_key(WHAT)?;
    let not_after = now
        .saturating_add(seconds(policy.server_validity)?)
        .min(ca.not_after);
    let mut params = CertificateParams::new(policy.dns_names()).map_err(error)?;
    params
        .subject_alt_names
        .extend(policy.extra_ips.iter().copied().map(SanType::IpAddress));
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Dynatrace");
    name.push(DnType::CommonName, policy.service_dns_name.as_str());
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = datetime(now - BACKDATE_SECONDS)?;
    params.not_after = datetime(not_after)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(error)?;
    Ok((not_after, cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests;
