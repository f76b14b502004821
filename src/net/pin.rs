//! Certificate pinning (`--tls-fingerprint`): trusting one server certificate by its SHA-256
//! fingerprint, as `cairn serve --tls-self-signed` prints it, instead of through a CA.
//!
//! A TLS handshake with the server fetches its certificate, accepted only when its
//! fingerprint is the one given and the server proves it holds the certificate's key (the
//! handshake's signature is verified as usual). That certificate then becomes the only
//! root the connection trusts, so every later connection is verified against it by the
//! ordinary path (a different certificate fails; the name the URL uses must be one the
//! certificate holds, as `--tls-self-signed` makes it for every name and address of its
//! machine). Also: the fingerprint of a certificate, and the message for a CA certificate
//! used as a server's own.

use crate::error::{Error, Result};
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A SHA-256 certificate fingerprint.
pub type Fingerprint = [u8; 32];

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// `AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints it.
pub fn show(fingerprint: &Fingerprint) -> String {
    let hex: Vec<String> = fingerprint.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Reads a fingerprint as `show` prints it, or as 64 hex digits with or without colons.
pub fn parse(text: &str) -> Result<Fingerprint> {
    let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    hex::decode(&digits)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{text:?} is not a SHA-256 fingerprint: give the 64 hex digits `cairn serve --tls-self-signed` printed (colons allowed)"
            ))
        })
}

/// A DER certificate as PEM.
pub fn pem(der: &[u8]) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out.into_bytes()
}

/// Fetches the certificate of the server `url` (`https://host[:port]/…`) names, accepting it only when its fingerprint is `pinned`; returns it as PEM, to be
/// trusted as the only root of the connections that follow.
pub fn pinned_certificate(url: &str, pinned: &Fingerprint, timeout: Duration) -> Result<Vec<u8>> {
    let (host, port) = host_and_port(url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier {
        pinned: *pinned,
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone())
        .map_err(|e| Error::InvalidInput(format!("{host} cannot name a TLS server: {e}")))?;
    let connecting = |e: std::io::Error| {
        Error::io(
            format!("connecting to {host}:{port} for its certificate"),
            e,
        )
    };
    let addresses: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(connecting)?
        .collect();
    let mut tried = Err(connecting(std::io::ErrorKind::NotFound.into()));
    for address in addresses {
        tried = TcpStream::connect_timeout(&address, timeout).map_err(connecting);
        if tried.is_ok() {
            break;
        }
    }
    let mut socket = tried?;
    socket.set_read_timeout(Some(timeout)).map_err(connecting)?;
    socket
        .set_write_timeout(Some(timeout))
        .map_err(connecting)?;
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| Error::InvalidInput(format!("TLS set-up: {e}")))?;
    while connection.is_handshaking() {
        if let Err(e) = connection.complete_io(&mut socket) {
            let seen = verifier.seen.lock().expect("not poisoned").take();
            return Err(match seen {
                Some(other) if fingerprint(&other) != *pinned => Error::InvalidInput(format!(
                    "the server at {host}:{port} presented a certificate with SHA-256 fingerprint {}, not the pinned {}: it is another server, or its certificate was replaced (then pin the new one)",
                    show(&fingerprint(&other)),
                    show(pinned)
                )),
                _ => connecting(e),
            });
        }
    }
    let certificate = verifier.seen.lock().expect("not poisoned").take();
    let certificate =
        certificate.ok_or_else(|| connecting(std::io::ErrorKind::InvalidData.into()))?;
    Ok(pem(&certificate))
}

/// The host and port of an `https://` URL.
fn host_and_port(url: &str) -> Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(Error::InvalidInput(format!(
            "--tls-fingerprint pins the certificate of an https:// server; {url} is not one"
        )));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            match port.parse() {
                Ok(port) => (host, port),
                Err(_) => (authority, 443),
            }
        }
        _ => (authority, 443),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// Accepts the one certificate whose fingerprint is pinned, whatever name it holds, and
/// verifies the handshake's signatures as usual.
#[derive(Debug)]
struct PinVerifier {
    pinned: Fingerprint,
    provider: Arc<CryptoProvider>,
    /// The end-entity certificate the server presented.
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("not poisoned") = Some(end_entity.to_vec());
        match fingerprint(end_entity) == self.pinned {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::General(
                "certificate fingerprint is not the pinned one".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What to say when TLS refused a server's certificate because it is a CA's
/// (`CaUsedAsEndEntity`): most often one made by `openssl req -x509` without the
/// extensions a server certificate needs.
pub const CA_AS_SERVER_ADVICE: &str = "the server's certificate is marked as a CA certificate (basicConstraints CA:TRUE, what `openssl req -x509` makes by default), and TLS refuses a CA certificate as a server's own. Run the server with `cairn serve --tls-self-signed` and connect with the --tls-fingerprint it prints, or make a server certificate: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 -keyout key.pem -out cert.pem -subj /CN=HOST -addext subjectAltName=DNS:HOST -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth (docs/SECURITY.md)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_back_as_shown_and_urls_give_their_host_and_port() {
        let print = fingerprint(b"certificate");
        assert_eq!(parse(&show(&print)).unwrap(), print);
        assert_eq!(parse(&hex::encode(print)).unwrap(), print);
        assert!(parse("AB:CD").is_err());
        let at = |url: &str| host_and_port(url).unwrap();
        assert_eq!(at("https://h:8443/repo"), ("h".into(), 8443));
        assert_eq!(at("https://h/repo"), ("h".into(), 443));
        assert_eq!(at("https://[::1]:9000/b"), ("::1".into(), 9000));
        assert!(host_and_port("s3:https://store/bucket").is_err());
        assert!(host_and_port("http://h/repo").is_err());
    }

    #[test]
    fn pem_wraps_base64_at_64_columns() {
        let text = String::from_utf8(pem(&[7; 100])).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(text.lines().all(|line| line.len() <= 64));
    }
}
