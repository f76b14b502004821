//! `cairn serve --tls-self-signed`: a server certificate made for this machine, kept in a
//! directory and made again only when missing, so its fingerprint (what clients pin with
//! `--tls-fingerprint`) stays the same from one start to the next. It is a proper server
//! certificate (not a CA: basicConstraints CA:FALSE, extendedKeyUsage serverAuth, an ECDSA
//! P-256 key) naming `localhost`, the host name, every address of the machine's interfaces
//! and whatever else is asked (`--tls-name`), so clients may reach it by any of them.

use super::TlsFiles;
use crate::error::{Error, Result};
use crate::net::pin::{Fingerprint, fingerprint};
use std::net::IpAddr;
use std::path::Path;

/// The certificate in `dir` (`cert.pem`, `key.pem`), made first when either is missing,
/// naming `extra_names` as well as this machine; returns the files and the certificate's
/// fingerprint.
pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<(TlsFiles, Fingerprint)> {
    let files = TlsFiles {
        cert_chain: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let context = |what: &str| format!("{what} the self-signed certificate in {}", dir.display());
    if !(files.cert_chain.exists() && files.key.exists()) {
        let (cert_pem, key_pem) = make(extra_names)?;
        crate::repo::backend::create_private_dir(dir)?;
        crate::catalogue::write_private_atomically(&files.key, key_pem.as_bytes())?;
        crate::catalogue::write_private_atomically(&files.cert_chain, cert_pem.as_bytes())?;
    }
    let pem =
        std::fs::read_to_string(&files.cert_chain).map_err(|e| Error::io(context("reading"), e))?;
    let der = pem_body(&pem).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} holds no PEM certificate: remove it and the key beside it to make a new one",
            files.cert_chain.display()
        ))
    })?;
    Ok((files, fingerprint(&der)))
}

/// A new certificate and key, as PEM.
fn make(extra_names: &[String]) -> Result<(String, String)> {
    let mut names = vec!["localhost".to_owned(), crate::host_name()];
    names.extend(extra_names.iter().cloned());
    names.sort();
    names.dedup();
    let failed = |e: rcgen::Error| Error::InvalidInput(format!("making a certificate: {e}"));
    let (addresses, dns): (Vec<String>, Vec<String>) = names
        .into_iter()
        .partition(|name| name.parse::<IpAddr>().is_ok());
    let mut params = rcgen::CertificateParams::new(dns).map_err(failed)?;
    let mut ips: Vec<IpAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    ips.extend(interface_addresses());
    ips.sort();
    ips.dedup();
    params
        .subject_alt_names
        .extend(ips.into_iter().map(rcgen::SanType::IpAddress));
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("cairn serve on {}", crate::host_name()),
    );
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let certificate = params.self_signed(&key).map_err(failed)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// The addresses of this machine's network interfaces (loopback included).
fn interface_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list freed below by freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs made, not yet freed.
        let node = unsafe { &*at };
        if !node.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which kind it is.
            let family = i32::from(unsafe { (*node.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let v4 = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in) };
                addresses.push(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let v6 = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in6) };
                addresses.push(IpAddr::from(v6.sin6_addr.s6_addr));
            }
        }
        at = node.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// The DER bytes of the first certificate of a PEM text.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let body: String = pem[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("tls");
        let (files, first) = ensure(&keep, &["backup.example.net".into()]).unwrap();
        let (_, again) = ensure(&keep, &[]).unwrap();
        assert_eq!(first, again);
        let pem = std::fs::read_to_string(&files.cert_chain).unwrap();
        assert_eq!(fingerprint(&pem_body(&pem).unwrap()), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
}
