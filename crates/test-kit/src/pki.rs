//! A small certificate authority for test clusters and test webhook servers.
//!
//! rustls (used by kube-rs) needs a real CA as trust anchor: a self-signed leaf is rejected with
//! `UnknownIssuer`. So every serving certificate here is a v3 leaf signed by a separate CA.

use std::net::IpAddr;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM encoded.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// A certificate authority that issues serving certificates.
pub struct CertificateAuthority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA with a fresh ECDSA P-256 key.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating the CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-signing the CA certificate")?;
        Ok(Self { issuer })
    }

    /// The CA certificate (PEM), what clients trust and what goes into a `caBundle`.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a TLS serving certificate for the given DNS names and IP addresses.
    pub fn issue_server_cert(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> anyhow::Result<IssuedCertificate> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = dns_names
            .iter()
            .map(|dns| {
                Ok(SanType::DnsName(
                    (*dns)
                        .try_into()
                        .with_context(|| format!("invalid DNS name {dns:?}"))?,
                ))
            })
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<anyhow::Result<_>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("generating a serving key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the serving certificate for {common_name}"))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A key pair for signing service-account tokens: (private key PEM, public key PEM).
pub fn service_account_key_pair() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating the service-account signing key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_leaf_with_ip_and_dns_sans() {
        let ca = CertificateAuthority::new("test-ca").unwrap();
        let leaf = ca
            .issue_server_cert("webhook", &["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        assert_ne!(ca.cert_pem(), leaf.cert_pem);
    }

    #[test]
    fn rejects_an_invalid_dns_name() {
        let ca = CertificateAuthority::new("test-ca").unwrap();
        let err = ca.issue_server_cert("x", &["bücher.example"], &[]).unwrap_err();
        assert!(format!("{err:#}").contains("invalid DNS name"), "{err:#}");
    }
}
