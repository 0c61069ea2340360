//! HTTP clients for talking to agents. TLS is rustls with the `ring`
//! provider, installed once per process before any client is built.

use std::sync::Once;

/// Installs the process-wide TLS crypto provider (idempotent).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client builder with the provider in place.
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
