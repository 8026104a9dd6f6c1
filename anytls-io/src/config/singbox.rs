//! sing-box's schema: the `anytls` outbound and inbound with their TLS, dial
//! and listen fields, the local proxy inbounds (`mixed`, `socks`, `http`) of a
//! client config, and what each field becomes here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anytls_core::PaddingScheme;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::source::{ProbeEntry, Source, choose};
use super::{
    AnytlsUri, ConfigError, ConfigNote, DEFAULT_SERVER_PORT, DEFAULT_SOCKS_LISTEN, Notes,
    de_duration, de_listable, invalid, join_host_port, under,
};
use crate::acme::AcmeConfig;
use crate::client::ClientConfig;
use crate::dial::{DialOptions, DomainStrategy};
use crate::proxy::{Protocols, ProxyUser};
use crate::server::ServerConfig;
use crate::tls::{Identity, ServerTls, TlsVersion, Verification, hex32, parse_pin};

// ---------------------------------------------------------------------------
// Values

/// An optional string or path where `""` means unset, as in sing-box.
fn de_opt_nonempty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(T::from))
}

fn de_tls_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TlsVersion>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    TlsVersion::parse(&s).map(Some).map_err(de::Error::custom)
}

/// sing-box's domain strategy names (`""` is "as is").
pub(super) fn parse_domain_strategy(s: &str) -> Result<DomainStrategy, String> {
    Ok(match s {
        "" | "as_is" => DomainStrategy::AsIs,
        "prefer_ipv4" => DomainStrategy::PreferIpv4,
        "prefer_ipv6" => DomainStrategy::PreferIpv6,
        "ipv4_only" => DomainStrategy::Ipv4Only,
        "ipv6_only" => DomainStrategy::Ipv6Only,
        _ => {
            return Err(format!(
                "unknown domain strategy {s:?} (use prefer_ipv4, prefer_ipv6, ipv4_only or ipv6_only)"
            ));
        }
    })
}

fn de_domain_strategy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DomainStrategy>, D::Error> {
    let s = String::deserialize(d)?;
    parse_domain_strategy(&s)
        .map(Some)
        .map_err(de::Error::custom)
}

/// A routing mark: an integer or a string (`"0x1234"` or `"4660"`); 0 is unset.
pub(super) fn de_routing_mark<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct Mark;
    impl Visitor<'_> for Mark {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a 32-bit mark: an integer or a hex string like \"0x1234\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("routing mark {v} is above 2^32-1")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v)
                .map_err(|_| E::custom(format!("routing mark {v} is not a 32-bit mark")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => v.parse::<u32>(),
            };
            parsed.map_err(|_| E::custom(format!("routing mark {v:?} is not a 32-bit number")))
        }
    }
    let mark = d.deserialize_any(Mark)?;
    Ok((mark != 0).then_some(mark))
}

fn de_ip<'de, D: Deserializer<'de>, T: std::str::FromStr>(d: D) -> Result<Option<T>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| de::Error::custom(format!("{s:?} is not an IP address of this family")))
}

fn de_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    de_ip(d)
}

fn de_ipv6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv6Addr>, D::Error> {
    de_ip(d)
}

/// Deserializes `T` and refuses it when `check` says so (the error carries
/// the field's path and position).
fn checked<'de, D, T>(d: D, check: fn(&T) -> Result<(), String>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v = T::deserialize(d)?;
    check(&v).map_err(de::Error::custom)?;
    Ok(Some(v))
}

const DETOUR_OUT: &str = "detour is not supported: this program has no other outbounds, and \
dialing the server directly would bypass the detour; remove it to connect directly";
const DETOUR_IN: &str =
    "detour (handing connections to another inbound) is not supported; remove it";
const NETNS: &str = "network namespaces are not supported: the sockets would live in this \
program's namespace instead; run the program in the namespace (ip netns exec NAME anytls ...) \
and remove netns";
/// The message of an enabled `tls.ech` on the client.
pub(super) const ECH_CLIENT: &str = "Encrypted Client Hello is not available in this build \
(rustls's client ECH needs an HPKE provider the ring crypto provider does not have); connecting \
without it would send the real server name in clear, so this config is refused. Remove tls.ech \
to connect without ECH.";
const ECH_SERVER: &str = "Encrypted Client Hello is not available in this build (rustls has no \
server-side ECH); clients configured for ECH could not connect. Remove tls.ech.";
/// The message of an enabled `tls.reality`.
pub(super) const REALITY: &str = "AnyTLS over REALITY is not supported: without it the connection \
would be plain TLS where the other side expects REALITY. Remove tls.reality and use a certificate.";
const DNS01: &str = "the DNS-01 challenge is not supported: remove dns01_challenge; TLS-ALPN-01 \
(on this port) and HTTP-01 (port 80) need no DNS provider";
const SPKI_PIN: &str = "public-key (SPKI) pins are not supported: this program pins the whole \
certificate; use pin_sha256 with the certificate's SHA-256 (anytls server prints it). Ignoring \
the pin would accept any certificate the roots vouch for";
/// The message of a client certificate on the client.
pub(super) const CLIENT_CERT: &str = "client certificates are not supported by this program \
(a server that asks for one would refuse the connection); remove it";
const CLIENT_AUTH: &str = "verifying client certificates is not supported by this program; \
serving without it would let clients in without one. Remove client_authentication (or set \"no\")";

fn refuse_nonempty_str(s: &str, msg: &str) -> Result<(), String> {
    if s.is_empty() {
        Ok(())
    } else {
        Err(msg.to_owned())
    }
}

fn de_detour_out<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s: &String| refuse_nonempty_str(s, DETOUR_OUT))
}

fn de_detour_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s: &String| refuse_nonempty_str(s, DETOUR_IN))
}

fn de_netns<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s: &String| refuse_nonempty_str(s, NETNS))
}

fn de_spki_pins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = de_listable(d)?;
    refuse_nonempty_str(&v.concat(), SPKI_PIN).map_err(de::Error::custom)?;
    Ok(v)
}

fn de_client_cert_lines<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = de_listable(d)?;
    refuse_nonempty_str(&v.concat(), CLIENT_CERT).map_err(de::Error::custom)?;
    Ok(v)
}

fn de_client_cert_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s: &String| refuse_nonempty_str(s, CLIENT_CERT))
}

fn de_client_auth<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s: &String| match s.as_str() {
        "" | "no" | "request" => Ok(()),
        _ => Err(CLIENT_AUTH.to_owned()),
    })
}

fn check_enabled(enabled: Option<bool>, msg: &str) -> Result<(), String> {
    if enabled == Some(true) {
        Err(msg.to_owned())
    } else {
        Ok(())
    }
}

/// Declares a struct with the socket fields sing-box's dial fields
/// (outbound) and listen fields (inbounds) share, in front of its own.
macro_rules! with_socket_fields {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        pub struct $name {
            /// Bind the socket to this interface (`SO_BINDTODEVICE`, Linux).
            #[serde(default)]
            pub bind_interface: Option<String>,
            /// Firewall mark (`SO_MARK`, Linux): an integer or `"0x1234"`.
            #[serde(default, deserialize_with = "de_routing_mark")]
            pub routing_mark: Option<u32>,
            /// `SO_REUSEADDR`.
            #[serde(default)]
            pub reuse_addr: Option<bool>,
            /// Refused when set (network namespaces).
            #[serde(default, deserialize_with = "de_netns")]
            pub netns: Option<String>,
            /// TCP Fast Open (when dialing; not set on listening sockets).
            #[serde(default)]
            pub tcp_fast_open: Option<bool>,
            /// Multipath TCP.
            #[serde(default)]
            pub tcp_multi_path: Option<bool>,
            /// Ignored: TCP keep-alive is left to the system.
            #[serde(default)]
            pub disable_tcp_keep_alive: Option<bool>,
            /// Ignored.
            #[serde(default, deserialize_with = "de_duration")]
            pub tcp_keep_alive: Option<Duration>,
            /// Ignored.
            #[serde(default, deserialize_with = "de_duration")]
            pub tcp_keep_alive_interval: Option<Duration>,
            /// Ignored: UDP travels inside the TLS connection or is the system's.
            #[serde(default)]
            pub udp_fragment: Option<bool>,
            $($body)*
        }

        impl $name {
            /// Notes for the socket fields that are not applied here.
            fn socket_notes(&self, n: &mut Notes) {
                n.ignored_if(
                    self.disable_tcp_keep_alive.is_some()
                        || self.tcp_keep_alive.is_some()
                        || self.tcp_keep_alive_interval.is_some(),
                    "tcp_keep_alive",
                    "TCP keep-alive is left to the system; AnyTLS heartbeats (heartbeat) detect dead sessions",
                );
                n.ignored_if(
                    self.udp_fragment.is_some(),
                    "udp_fragment",
                    "UDP travels inside the TLS connection (UDP over TCP) or is the system's",
                );
            }
        }
    };
}

// ---------------------------------------------------------------------------
// TLS, client side

/// Declares a TLS struct with the fields sing-box's inbound and outbound TLS
/// share in front of its own.
macro_rules! with_tls_fields {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        pub struct $name {
            /// Must not be `false` (AnyTLS always uses TLS).
            #[serde(default)]
            pub enabled: Option<bool>,
            /// Client: the name sent (SNI) and checked; defaults to `server`.
            /// Server: the name of a generated self-signed certificate (and of
            /// the share link).
            #[serde(default, deserialize_with = "de_opt_nonempty")]
            pub server_name: Option<String>,
            /// ALPN protocols.
            #[serde(default, deserialize_with = "de_listable")]
            pub alpn: Vec<String>,
            /// Lowest TLS version (`"1.2"`, `"1.3"`; 1.0 and 1.1 are errors).
            #[serde(default, deserialize_with = "de_tls_version")]
            pub min_version: Option<TlsVersion>,
            /// Highest TLS version.
            #[serde(default, deserialize_with = "de_tls_version")]
            pub max_version: Option<TlsVersion>,
            /// Cipher suites by IANA name.
            #[serde(default, deserialize_with = "de_listable")]
            pub cipher_suites: Vec<String>,
            /// Ignored: rustls's key exchange groups are used.
            #[serde(default, deserialize_with = "de_listable")]
            pub curve_preferences: Vec<String>,
            /// Inline PEM (string or list of lines): the trusted root
            /// certificate(s) of a client, the certificate chain of a server.
            #[serde(default, deserialize_with = "de_listable")]
            pub certificate: Vec<String>,
            /// The same as a PEM file.
            #[serde(default, deserialize_with = "de_opt_nonempty")]
            pub certificate_path: Option<PathBuf>,
            /// Ignored: TLS runs in this process.
            #[serde(default)]
            pub kernel_tx: Option<bool>,
            /// Ignored: TLS runs in this process.
            #[serde(default)]
            pub kernel_rx: Option<bool>,
            $($body)*
        }
    };
}

/// sing-box's `udp_timeout`: a Go duration, or (older configs) an integer
/// of seconds.
fn de_udp_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Compat {
        Seconds(u64),
        Text(String),
    }
    match Compat::deserialize(d) {
        Ok(Compat::Seconds(n)) => Ok(Some(Duration::from_secs(n))),
        Ok(Compat::Text(t)) => super::parse_go_duration(&t)
            .map(Some)
            .map_err(de::Error::custom),
        Err(_) => Err(de::Error::custom(
            "expected a duration (\"5m\") or a number of seconds",
        )),
    }
}

/// `tls.utls` (accepted; the ClientHello stays rustls's, with a warning).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Utls {
    /// Imitate a browser's ClientHello.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Which browser (`chrome` when empty).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// `tls.ech` of an outbound: accepted only when not enabled.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboundEch {
    /// Must not be `true` (refused: see the module docs).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// ECH configuration lines.
    #[serde(default, deserialize_with = "de_listable")]
    pub config: Vec<String>,
    /// ECH configuration file.
    #[serde(default)]
    pub config_path: Option<String>,
    /// Name for the HTTPS record query.
    #[serde(default)]
    pub query_server_name: Option<String>,
    /// Deprecated in sing-box.
    #[serde(default)]
    pub pq_signature_schemes_enabled: Option<bool>,
    /// Deprecated in sing-box.
    #[serde(default)]
    pub dynamic_record_sizing_disabled: Option<bool>,
}

impl OutboundEch {
    fn check(&self) -> Result<(), String> {
        check_enabled(self.enabled, ECH_CLIENT)
    }
}

fn de_out_ech<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OutboundEch>, D::Error> {
    checked(d, OutboundEch::check)
}

/// `tls.reality` of an outbound: accepted only when not enabled.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboundReality {
    /// Must not be `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The server's REALITY public key.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Short id.
    #[serde(default)]
    pub short_id: Option<String>,
}

fn de_out_reality<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OutboundReality>, D::Error> {
    checked(d, |r: &OutboundReality| check_enabled(r.enabled, REALITY))
}

with_tls_fields! {
/// sing-box outbound TLS options, plus our `pin_sha256`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboundTls {
    /// Send no SNI (the certificate is still checked against the name).
    #[serde(default)]
    pub disable_sni: Option<bool>,
    /// Accept any certificate.
    #[serde(default)]
    pub insecure: Option<bool>,
    /// Refused when set (public-key pins).
    #[serde(default, deserialize_with = "de_spki_pins")]
    pub certificate_public_key_sha256: Vec<String>,
    /// Refused when set.
    #[serde(default, deserialize_with = "de_client_cert_lines")]
    pub client_certificate: Vec<String>,
    /// Refused when set.
    #[serde(default, deserialize_with = "de_client_cert_path")]
    pub client_certificate_path: Option<String>,
    /// Refused when set.
    #[serde(default, deserialize_with = "de_client_cert_lines")]
    pub client_key: Vec<String>,
    /// Refused when set.
    #[serde(default, deserialize_with = "de_client_cert_path")]
    pub client_key_path: Option<String>,
    /// Not applied (warning).
    #[serde(default)]
    pub fragment: Option<bool>,
    /// Not applied.
    #[serde(default, deserialize_with = "de_duration")]
    pub fragment_fallback_delay: Option<Duration>,
    /// Not applied (warning).
    #[serde(default)]
    pub record_fragment: Option<bool>,
    /// Refused when enabled.
    #[serde(default, deserialize_with = "de_out_ech")]
    pub ech: Option<OutboundEch>,
    /// Accepted with a warning: the ClientHello is rustls's.
    #[serde(default)]
    pub utls: Option<Utls>,
    /// Refused when enabled.
    #[serde(default, deserialize_with = "de_out_reality")]
    pub reality: Option<OutboundReality>,
    /// Ours: accept exactly the certificate with this DER SHA-256 (64 hex digits).
    #[serde(default, deserialize_with = "de_opt_nonempty")]
    pub pin_sha256: Option<String>,
}
}

impl OutboundTls {
    /// What cannot be honoured and must not be ignored (also for options
    /// built in code).
    fn refusals(&self) -> Result<(), ConfigError> {
        let client_cert = self.client_certificate.concat()
            + &self.client_key.concat()
            + self.client_certificate_path.as_deref().unwrap_or("")
            + self.client_key_path.as_deref().unwrap_or("");
        let checks = [
            (
                "tls.ech",
                self.ech.as_ref().map_or(Ok(()), OutboundEch::check),
            ),
            (
                "tls.reality",
                check_enabled(self.reality.as_ref().and_then(|r| r.enabled), REALITY),
            ),
            (
                "tls.certificate_public_key_sha256",
                refuse_nonempty_str(&self.certificate_public_key_sha256.concat(), SPKI_PIN),
            ),
            (
                "tls.client_certificate",
                refuse_nonempty_str(&client_cert, CLIENT_CERT),
            ),
        ];
        for (field, res) in checks {
            res.map_err(|msg| invalid(field, msg))?;
        }
        Ok(())
    }

    fn notes(&self, n: &mut Notes) {
        if let Some(u) = self.utls.as_ref().filter(|u| u.enabled == Some(true)) {
            let fp = u
                .fingerprint
                .as_deref()
                .filter(|f| !f.is_empty())
                .unwrap_or("chrome");
            n.warn("tls.utls", utls_warning(fp));
        }
        for (set, field) in [
            (self.fragment == Some(true), "tls.fragment"),
            (self.record_fragment == Some(true), "tls.record_fragment"),
        ] {
            if set {
                n.warn(
                    field,
                    "not applied: the ClientHello is sent whole, in one TLS record and one write",
                );
            }
        }
        n.ignored_if(
            self.fragment_fallback_delay.is_some(),
            "tls.fragment_fallback_delay",
            "the handshake is not fragmented",
        );
        tls_notes(
            n,
            &self.curve_preferences,
            self.kernel_tx == Some(true) || self.kernel_rx == Some(true),
        );
    }
}

/// Notes for the TLS fields both sides ignore.
fn tls_notes(n: &mut Notes, curve_preferences: &[String], kernel_tls: bool) {
    n.ignored_if(
        !curve_preferences.is_empty(),
        "tls.curve_preferences",
        "rustls's key exchange groups are used (X25519, P-256, P-384)",
    );
    n.ignored_if(
        kernel_tls,
        "tls.kernel_tx/kernel_rx",
        "kernel TLS is not used: TLS runs in this process",
    );
}

/// `Debug` without private keys.
impl fmt::Debug for OutboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .field("alpn", &self.alpn)
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .field("certificate_path", &self.certificate_path)
            .field("pin_sha256", &self.pin_sha256)
            .field("utls", &self.utls)
            .finish_non_exhaustive()
    }
}

/// `Debug` without the private key.
impl fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundTls")
            .field("server_name", &self.server_name)
            .field("alpn", &self.alpn)
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .field("certificate_path", &self.certificate_path)
            .field("key_path", &self.key_path)
            .field("inline_key", &(!self.key.is_empty()))
            .finish_non_exhaustive()
    }
}

/// `Debug` without the key.
impl fmt::Debug for InboundEch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundEch")
            .field("enabled", &self.enabled)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// `Debug` without the private key.
impl fmt::Debug for InboundReality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundReality")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// The warning for a uTLS fingerprint (sing-box `tls.utls`, mihomo
/// `client-fingerprint`).
pub(super) fn utls_warning(fingerprint: &str) -> String {
    format!(
        "WARNING: the TLS ClientHello is rustls's own, not the {fingerprint:?} browser's: \
         uTLS fingerprints are not available in this program, so the handshake does not \
         look like that browser"
    )
}

// ---------------------------------------------------------------------------
// The outbound (client)

/// sing-box's `domain_resolver` dial field: a DNS server tag, or an object
/// (`server`, `strategy`, ...). The server is not used (this program asks
/// the system resolver); `strategy` is honoured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainResolver {
    /// The DNS server's tag (not used).
    pub server: Option<String>,
    /// Which addresses to use.
    pub strategy: Option<DomainStrategy>,
    /// Whether more than `server` and `strategy` was given (not used).
    pub other_options: bool,
}

impl<'de> Deserialize<'de> for DomainResolver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DomainResolver, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Options {
            #[serde(default)]
            action: Option<String>,
            #[serde(default)]
            server: Option<String>,
            #[serde(default, deserialize_with = "de_domain_strategy")]
            strategy: Option<DomainStrategy>,
            #[serde(default)]
            disable_cache: Option<bool>,
            #[serde(default)]
            rewrite_ttl: Option<u32>,
            #[serde(default)]
            client_subnet: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DomainResolver;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DNS server tag or an object with server and strategy")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DomainResolver, E> {
                Ok(DomainResolver {
                    server: Some(v.to_owned()),
                    ..DomainResolver::default()
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<DomainResolver, M::Error> {
                let o = Options::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DomainResolver {
                    server: o.server,
                    strategy: o.strategy,
                    other_options: o.action.is_some()
                        || o.disable_cache.is_some()
                        || o.rewrite_ttl.is_some()
                        || o.client_subnet.is_some(),
                })
            }
        }
        d.deserialize_any(V)
    }
}

with_socket_fields! {
/// sing-box's `anytls` outbound with its TLS and dial fields, our pool
/// extensions, and `listen`/`listen_port` for a local listener of the
/// `anytls client` program.
///
/// Field names are sing-box's (and KexiChanProjectProxy/sing-box's for
/// `ensure_idle_session`, `heartbeat`, `max_connection_lifetime`, ...).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundOptions {
    /// `"anytls"` (optional in a bare object).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// sing-box tag, kept for messages.
    #[serde(default)]
    pub tag: Option<String>,
    /// Server host.
    #[serde(default)]
    pub server: Option<String>,
    /// Server port.
    #[serde(default)]
    pub server_port: Option<u16>,
    /// The password.
    #[serde(default)]
    pub password: Option<String>,
    /// Pool maintenance interval (30 s).
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_session_check_interval: Option<Duration>,
    /// Idle time after which a session is closed (30 s).
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_session_timeout: Option<Duration>,
    /// Idle sessions kept through the idle sweep (0).
    #[serde(default)]
    pub min_idle_session: Option<usize>,
    /// Value of the `client=` setting.
    #[serde(default)]
    pub client_metadata: Option<String>,
    /// TLS.
    #[serde(default)]
    pub tls: Option<OutboundTls>,
    /// Dial field: refused when set (there are no other outbounds here).
    #[serde(default, deserialize_with = "de_detour_out")]
    pub detour: Option<String>,
    /// Dial field: local IPv4 address.
    #[serde(default, deserialize_with = "de_ipv4")]
    pub inet4_bind_address: Option<Ipv4Addr>,
    /// Dial field: local IPv6 address.
    #[serde(default, deserialize_with = "de_ipv6")]
    pub inet6_bind_address: Option<Ipv6Addr>,
    /// Dial field: ignored.
    #[serde(default)]
    pub bind_address_no_port: Option<bool>,
    /// Dial field: TCP connect plus TLS handshake limit.
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    /// Dial field: the system resolver is used; `strategy` is honoured.
    #[serde(default)]
    pub domain_resolver: Option<DomainResolver>,
    /// Dial field: ignored (graphical clients only).
    #[serde(default)]
    pub network_strategy: Option<String>,
    /// Dial field: ignored.
    #[serde(default, deserialize_with = "de_listable")]
    pub network_type: Vec<String>,
    /// Dial field: ignored.
    #[serde(default, deserialize_with = "de_listable")]
    pub fallback_network_type: Vec<String>,
    /// Dial field: Happy Eyeballs delay.
    #[serde(default, deserialize_with = "de_duration")]
    pub fallback_delay: Option<Duration>,
    /// Dial field (deprecated in sing-box): which addresses to try.
    #[serde(default, deserialize_with = "de_domain_strategy")]
    pub domain_strategy: Option<DomainStrategy>,
    /// Keep this many sessions idle, pre-warmed (0 = off).
    #[serde(default)]
    pub ensure_idle_session: Option<usize>,
    /// At most this many pre-warm dials per check (0 = no cap).
    #[serde(default)]
    pub ensure_idle_session_create_rate: Option<usize>,
    /// HeartRequest interval (0 = off).
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat: Option<Duration>,
    /// Close a session when a heartbeat is not answered within this (0 = never).
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat_timeout: Option<Duration>,
    /// Close sessions older than this (0 = never).
    #[serde(default, deserialize_with = "de_duration")]
    pub max_connection_lifetime: Option<Duration>,
    /// Spread of session lifetimes.
    #[serde(default, deserialize_with = "de_duration")]
    pub connection_lifetime_jitter: Option<Duration>,
    /// Ours: a local mixed (SOCKS5 + HTTP) listener, address (127.0.0.1).
    #[serde(default)]
    pub listen: Option<String>,
    /// Ours: its port (1080).
    #[serde(default)]
    pub listen_port: Option<u16>,
}
}

impl fmt::Debug for OutboundOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundOptions")
            .field("tag", &self.tag)
            .field("server", &self.server)
            .field("server_port", &self.server_port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The sing-box type name of `p` (`mixed`, `socks`, `http`).
pub fn protocols_name(p: Protocols) -> &'static str {
    match p {
        Protocols::Mixed => "mixed",
        Protocols::Socks => "socks",
        Protocols::Http => "http",
    }
}

/// One local proxy listener of the client program (served with
/// [`serve_proxy`](crate::proxy::serve_proxy)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSetup {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Which protocols.
    pub protocols: Protocols,
    /// Who may use it; empty: no authentication.
    pub users: Vec<ProxyUser>,
    /// The inbound's tag or name, for messages.
    pub tag: Option<String>,
    /// Socket options ([`ListenOptions::bind`] makes the socket).
    pub socket: ListenOptions,
}

/// A client ready to build: the [`ClientConfig`], the local listeners the
/// configuration asks for, and the startup summary.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    /// The client.
    pub config: ClientConfig,
    /// Local proxy listeners, in the order of the config (empty: none given,
    /// the program uses its default).
    pub listeners: Vec<ListenerSetup>,
    /// The outbound's tag (mihomo: the proxy's name).
    pub tag: Option<String>,
    /// What was taken, ignored (and why) and warnings.
    pub notes: Vec<ConfigNote>,
}

fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn listen_addr(
    listen: Option<&str>,
    port: Option<u16>,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    let ip = match listen {
        None | Some("") => default.ip(),
        Some(s) => s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| invalid("listen", format!("{s:?} is not an IP address")))?,
    };
    Ok(SocketAddr::new(ip, port.unwrap_or(default.port())))
}

impl OutboundOptions {
    /// The TLS options, created empty if absent.
    pub fn tls_mut(&mut self) -> &mut OutboundTls {
        self.tls.get_or_insert_with(OutboundTls::default)
    }

    /// Takes server, port, password, SNI and verification from a share link.
    pub fn apply_uri(&mut self, uri: &AnytlsUri) {
        self.server = Some(uri.host.clone());
        self.server_port = Some(uri.port);
        if let Some(pw) = &uri.password {
            self.password = Some(pw.clone());
        }
        if let Some(sni) = &uri.sni {
            self.tls_mut().server_name = Some(sni.clone());
        }
        if let Some(pin) = &uri.pin {
            self.set_verification(Verification::Pin(*pin));
        } else if uri.insecure {
            self.set_verification(Verification::Insecure);
        }
    }

    /// Sets how the certificate is checked, replacing whatever was configured.
    pub fn set_verification(&mut self, v: Verification) {
        let tls = self.tls_mut();
        tls.insecure = None;
        tls.pin_sha256 = None;
        tls.certificate_path = None;
        tls.certificate.clear();
        match v {
            Verification::WebPki => {}
            Verification::CaFile(p) => tls.certificate_path = Some(p),
            Verification::CaPem(pem) => tls.certificate = pem.lines().map(str::to_owned).collect(),
            Verification::Pin(p) => tls.pin_sha256 = Some(hex32(&p)),
            Verification::Insecure => tls.insecure = Some(true),
        }
    }

    /// Builds the client configuration (checks the pool settings and the TLS
    /// options too). `listeners` holds the `listen`/`listen_port` listener.
    pub fn to_client_setup(&self) -> Result<ClientSetup, ConfigError> {
        let mut notes = Notes::default();
        let setup = self.build(&mut notes)?;
        Ok(ClientSetup {
            notes: notes.list,
            ..setup
        })
    }

    fn build(&self, notes: &mut Notes) -> Result<ClientSetup, ConfigError> {
        if let Some(kind) = self.kind.as_deref().filter(|k| *k != "anytls") {
            return Err(invalid(
                "type",
                format!("expected \"anytls\", got {kind:?}"),
            ));
        }
        for (field, value, msg) in [
            ("detour", &self.detour, DETOUR_OUT),
            ("netns", &self.netns, NETNS),
        ] {
            refuse_nonempty_str(value.as_deref().unwrap_or(""), msg)
                .map_err(|m| invalid(field, m))?;
        }
        let server = self
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("server", "missing"))?;
        let port = self
            .server_port
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("server_port", "missing"))?;
        let password = self
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("password", "missing"))?;
        let mut cfg = ClientConfig::new(join_host_port(server, port), password);
        if let Some(tls) = &self.tls {
            if tls.enabled == Some(false) {
                return Err(invalid("tls.enabled", "AnyTLS always runs over TLS"));
            }
            tls.refusals()?;
            tls.notes(notes);
            cfg.sni = tls.server_name.clone().filter(|s| !s.is_empty());
            cfg.alpn = tls.alpn.clone();
            cfg.verification = outbound_verification(tls)?;
            let o = &mut cfg.tls_options;
            o.min_version = tls.min_version;
            o.max_version = tls.max_version;
            o.cipher_suites = tls.cipher_suites.clone();
            o.disable_sni = tls.disable_sni == Some(true);
            // Unknown suites and crossed versions, named here rather than at
            // the first dial.
            crate::tls::client_config_with(&Verification::Insecure, &[], o)
                .map_err(|e| invalid("tls", e))?;
        }
        if let Some(m) = &self.client_metadata {
            cfg.client_name = m.clone();
        }
        if let Some(t) = nonzero(self.connect_timeout) {
            cfg.connect_timeout = t;
        }
        cfg.dial = self.dial_options(notes);
        self.pool(&mut cfg.pool)?;
        let mut listeners = Vec::new();
        if self.listen.is_some() || self.listen_port.is_some() {
            listeners.push(ListenerSetup {
                addr: listen_addr(
                    self.listen.as_deref(),
                    self.listen_port,
                    DEFAULT_SOCKS_LISTEN,
                )?,
                protocols: Protocols::Mixed,
                users: Vec::new(),
                tag: None,
                socket: ListenOptions::default(),
            });
        }
        Ok(ClientSetup {
            config: cfg,
            listeners,
            tag: self.tag.clone(),
            notes: Vec::new(),
        })
    }

    fn dial_options(&self, n: &mut Notes) -> DialOptions {
        let mut d = DialOptions {
            bind_interface: self.bind_interface.clone().filter(|s| !s.is_empty()),
            bind_address_v4: self.inet4_bind_address,
            bind_address_v6: self.inet6_bind_address,
            routing_mark: self.routing_mark,
            reuse_addr: self.reuse_addr == Some(true),
            tcp_fast_open: self.tcp_fast_open == Some(true),
            tcp_multi_path: self.tcp_multi_path == Some(true),
            fallback_delay: nonzero(self.fallback_delay),
            domain_strategy: self.domain_strategy.unwrap_or_default(),
        };
        if let Some(r) = &self.domain_resolver {
            if let Some(s) = r.strategy {
                d.domain_strategy = s;
                n.taken("domain_resolver.strategy", format!("domain strategy {s:?}"));
            }
            n.ignored_if(
                r.server.is_some() || r.other_options,
                "domain_resolver",
                "the server name is resolved by the system resolver (there are no DNS servers here)",
            );
        }
        n.ignored_if(
            self.bind_address_no_port == Some(true),
            "bind_address_no_port",
            "the kernel reserves the local port as usual",
        );
        self.socket_notes(n);
        n.ignored_if(
            self.network_strategy.is_some()
                || !self.network_type.is_empty()
                || !self.fallback_network_type.is_empty(),
            "network_strategy",
            "the system's routing picks the network (graphical clients only in sing-box)",
        );
        d
    }

    fn pool(&self, pool: &mut crate::PoolConfig) -> Result<(), ConfigError> {
        if let Some(d) = nonzero(self.idle_session_check_interval) {
            pool.check_interval = d;
        }
        if let Some(d) = nonzero(self.idle_session_timeout) {
            pool.idle_timeout = d;
        }
        if let Some(n) = self.min_idle_session {
            pool.min_idle = n;
        }
        if let Some(n) = self.ensure_idle_session {
            pool.ensure_idle = n;
        }
        if let Some(n) = self.ensure_idle_session_create_rate {
            pool.ensure_create_rate = n;
        }
        if self.heartbeat.is_some() {
            pool.heartbeat = nonzero(self.heartbeat);
        }
        if self.heartbeat_timeout.is_some() {
            pool.heartbeat_timeout = nonzero(self.heartbeat_timeout);
        }
        if self.max_connection_lifetime.is_some() {
            pool.max_session_lifetime = nonzero(self.max_connection_lifetime);
        }
        if let Some(j) = self.connection_lifetime_jitter {
            pool.lifetime_jitter = j;
        }
        pool.validate().map_err(|e| invalid("pool", e))
    }
}

fn outbound_verification(tls: &OutboundTls) -> Result<Verification, ConfigError> {
    let mut chosen = Vec::new();
    if tls.insecure == Some(true) {
        chosen.push(Verification::Insecure);
    }
    if let Some(p) = &tls.pin_sha256 {
        chosen.push(Verification::Pin(parse_pin(p)?));
    }
    if let Some(p) = &tls.certificate_path {
        chosen.push(Verification::CaFile(p.clone()));
    }
    if !tls.certificate.is_empty() {
        chosen.push(Verification::CaPem(inline_ca(&tls.certificate)?));
    }
    if chosen.len() > 1 {
        return Err(invalid(
            "tls",
            "choose one of insecure, pin_sha256, certificate_path and certificate",
        ));
    }
    Ok(chosen.pop().unwrap_or(Verification::WebPki))
}

/// Inline trusted certificates stay in memory (checked here, so that a bad
/// one is reported with its field).
fn inline_ca(lines: &[String]) -> Result<String, ConfigError> {
    let pem = join_lines(lines);
    crate::tls::pem_certs(&pem).map_err(|e| invalid("tls.certificate", e))?;
    Ok(pem)
}

/// sing-box joins list-of-lines values with `\n` and no trailing newline.
fn join_lines(lines: &[String]) -> String {
    lines.join("\n")
}

// ---------------------------------------------------------------------------
// Listen fields (sing-box's shared inbound fields), in two structs

/// Socket options of a listening socket (sing-box's listen fields
/// `bind_interface`, `routing_mark`, `reuse_addr`, `tcp_multi_path`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenOptions {
    /// `SO_BINDTODEVICE` (Linux; usually needs `CAP_NET_RAW`).
    pub bind_interface: Option<String>,
    /// `SO_MARK` (Linux; needs `CAP_NET_ADMIN`).
    pub routing_mark: Option<u32>,
    /// `SO_REUSEADDR` (on Unix it is set anyway, as the standard library does).
    pub reuse_addr: bool,
    /// Multipath TCP (Linux 5.6+); plain TCP where the kernel has none.
    pub tcp_multi_path: bool,
}

impl ListenOptions {
    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == ListenOptions::default()
    }

    /// A listening socket on `addr` with these options: non-blocking,
    /// backlog 1024, ready for `TcpListener::from_std` of any runtime.
    pub fn bind(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = Domain::for_address(addr);
        let tcp = || Socket::new(domain, Type::STREAM, Some(Protocol::TCP));
        let socket = if self.tcp_multi_path {
            mptcp_socket(domain).or_else(|e| {
                tracing::info!("no Multipath TCP for {addr} ({e}): plain TCP");
                tcp()
            })?
        } else {
            tcp()?
        };
        if cfg!(unix) || self.reuse_addr {
            socket.set_reuse_address(true)?;
        }
        if let Some(name) = &self.bind_interface {
            bind_device(&socket, name)?;
        }
        if let Some(mark) = self.routing_mark {
            set_mark(&socket, mark)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }
}

#[cfg(target_os = "linux")]
fn mptcp_socket(domain: socket2::Domain) -> std::io::Result<socket2::Socket> {
    socket2::Socket::new(
        domain,
        socket2::Type::STREAM,
        Some(socket2::Protocol::MPTCP),
    )
}

#[cfg(not(target_os = "linux"))]
fn mptcp_socket(_: socket2::Domain) -> std::io::Result<socket2::Socket> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_device(s: &socket2::Socket, name: &str) -> std::io::Result<()> {
    s.bind_device(Some(name.as_bytes()))
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind_interface {name:?}: {e}")))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_device(_: &socket2::Socket, _: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "bind_interface is supported on Linux only",
    ))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_mark(s: &socket2::Socket, mark: u32) -> std::io::Result<()> {
    s.set_mark(mark)
        .map_err(|e| std::io::Error::new(e.kind(), format!("routing_mark {mark:#x}: {e}")))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_mark(_: &socket2::Socket, _: u32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "routing_mark is supported on Linux only",
    ))
}

/// Declares an inbound struct with sing-box's listen fields in front of its
/// own, and the notes for the listen fields that have no effect here.
macro_rules! with_listen_fields {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        with_socket_fields! {
        $(#[$m])*
        pub struct $name {
            /// Listen address (an IP).
            #[serde(default)]
            pub listen: Option<String>,
            /// Listen port.
            #[serde(default)]
            pub listen_port: Option<u16>,
            /// Listen field: the UDP (UoT) idle timeout of the server; ignored
            /// on local listeners.
            #[serde(default, deserialize_with = "de_udp_timeout")]
            pub udp_timeout: Option<Duration>,
            /// Listen field: refused when set.
            #[serde(default, deserialize_with = "de_detour_in")]
            pub detour: Option<String>,
            /// Listen field (deprecated): ignored.
            #[serde(default)]
            pub sniff: Option<bool>,
            /// Listen field (deprecated): ignored.
            #[serde(default)]
            pub sniff_override_destination: Option<bool>,
            /// Listen field (deprecated): ignored.
            #[serde(default, deserialize_with = "de_duration")]
            pub sniff_timeout: Option<Duration>,
            /// Listen field (deprecated): ignored.
            #[serde(default, deserialize_with = "de_domain_strategy")]
            pub domain_strategy: Option<DomainStrategy>,
            /// Listen field (deprecated): ignored.
            #[serde(default)]
            pub udp_disable_domain_unmapping: Option<bool>,
            $($body)*
        }
        }

        impl $name {
            /// The socket options of the listen fields.
            pub fn listen_options(&self) -> ListenOptions {
                ListenOptions {
                    bind_interface: self.bind_interface.clone().filter(|s| !s.is_empty()),
                    routing_mark: self.routing_mark,
                    reuse_addr: self.reuse_addr == Some(true),
                    tcp_multi_path: self.tcp_multi_path == Some(true),
                }
            }

            /// Refusals and notes of the listen fields.
            fn listen_notes(&self, n: &mut Notes) -> Result<(), ConfigError> {
                for (field, value, msg) in [
                    ("detour", &self.detour, DETOUR_IN),
                    ("netns", &self.netns, NETNS),
                ] {
                    refuse_nonempty_str(value.as_deref().unwrap_or(""), msg)
                        .map_err(|m| invalid(field, m))?;
                }
                n.ignored_if(
                    self.tcp_fast_open == Some(true),
                    "tcp_fast_open",
                    "TCP Fast Open is not enabled on listening sockets here",
                );
                self.socket_notes(n);
                n.ignored_if(
                    self.sniff.is_some()
                        || self.sniff_override_destination.is_some()
                        || self.sniff_timeout.is_some()
                        || self.domain_strategy.is_some()
                        || self.udp_disable_domain_unmapping.is_some(),
                    "sniff/domain_strategy",
                    "there is no sniffing or routing here: destinations are used as requested",
                );
                Ok(())
            }
        }
    };
}

/// A user of a local proxy inbound (`username`, `password`).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalUser {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for LocalUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalUser")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

with_listen_fields! {
    /// A `mixed`, `socks` or `http` inbound of a sing-box client config: one
    /// local proxy listener of `anytls client`.
    #[derive(Clone, Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LocalInbound {
        /// `mixed`, `socks` or `http`.
        #[serde(rename = "type")]
        pub kind: String,
        /// sing-box tag.
        #[serde(default)]
        pub tag: Option<String>,
        /// Users; empty: no authentication.
        #[serde(default)]
        pub users: Vec<LocalUser>,
        /// Ignored: the system proxy settings are not changed.
        #[serde(default)]
        pub set_system_proxy: Option<bool>,
        /// `http` only: refused when enabled (no HTTPS proxy listener).
        #[serde(default)]
        pub tls: Option<InboundTls>,
        /// sing-box's SOCKS4 version pin (`socks`): ignored.
        #[serde(default)]
        pub version: Option<String>,
    }
}

impl LocalInbound {
    /// The listener, and its notes.
    pub(crate) fn to_listener_setup(&self, n: &mut Notes) -> Result<ListenerSetup, ConfigError> {
        let protocols = match self.kind.as_str() {
            "mixed" => Protocols::Mixed,
            "socks" => Protocols::Socks,
            "http" => Protocols::Http,
            k => {
                return Err(invalid(
                    "type",
                    format!("{k:?} is not a local proxy inbound"),
                ));
            }
        };
        self.listen_notes(n)?;
        if self.tls.as_ref().is_some_and(|t| t.enabled == Some(true)) {
            return Err(invalid(
                "tls",
                "HTTPS proxy listeners are not supported; remove tls (or set enabled false)",
            ));
        }
        n.ignored_if(
            self.set_system_proxy == Some(true),
            "set_system_proxy",
            "the system proxy settings are not changed",
        );
        n.ignored_if(
            self.udp_timeout.is_some(),
            "udp_timeout",
            "a SOCKS5 UDP association lasts as long as its TCP connection",
        );
        n.ignored_if(self.version.is_some(), "version", "SOCKS5 is served");
        let port = self
            .listen_port
            .ok_or_else(|| invalid("listen_port", "missing"))?;
        let addr = listen_addr(self.listen.as_deref(), Some(port), DEFAULT_SOCKS_LISTEN)?;
        let users: Vec<ProxyUser> = self
            .users
            .iter()
            .map(|u| ProxyUser::new(&u.username, &u.password))
            .collect();
        n.taken(
            "",
            format!(
                "{} listener on {addr}{}",
                protocols_name(protocols),
                if users.is_empty() {
                    " (no authentication)".to_owned()
                } else {
                    format!(" ({} user(s))", users.len())
                }
            ),
        );
        Ok(ListenerSetup {
            addr,
            protocols,
            users,
            tag: self.tag.clone(),
            socket: self.listen_options(),
        })
    }
}

/// A value and where it was in the config (`inbounds[2]`).
#[derive(Clone, Debug, Default)]
pub struct Located<T> {
    /// The path of the entry.
    pub path: String,
    /// The entry.
    pub value: T,
}

/// What `anytls client -c FILE` read: the anytls outbound, the local
/// listeners and remarks on the choice. Change fields (the program puts
/// its flags over them), then [`ClientOptions::to_client_setup`].
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The anytls outbound (a mihomo proxy is converted to one).
    pub outbound: OutboundOptions,
    /// Where the outbound was (`outbounds[1]`, `proxies[0]`; empty: the whole file).
    pub outbound_path: String,
    /// The local proxy inbounds (a mihomo config's ports and listeners are
    /// converted to them).
    pub listeners: Vec<Located<LocalInbound>>,
    /// Remarks made while reading (which entry was taken, what was left out).
    pub notes: Vec<ConfigNote>,
    /// `file: ` for messages.
    pub(super) prefix: String,
}

impl ClientOptions {
    /// Options around one outbound (no file).
    pub fn new(outbound: OutboundOptions) -> ClientOptions {
        ClientOptions {
            outbound,
            ..ClientOptions::default()
        }
    }

    /// Builds the client and the listeners: the outbound's own
    /// `listen`/`listen_port` first, then the inbounds in order. Errors and
    /// notes name the file and the field.
    pub fn to_client_setup(&self) -> Result<ClientSetup, ConfigError> {
        let (mut setup, mut notes) = under(&self.prefix, &self.outbound_path, |n| {
            self.outbound.build(n)
        })?;
        let mut list = self.notes.clone();
        list.append(&mut notes);
        for l in &self.listeners {
            let (listener, mut n) = under(&self.prefix, &l.path, |n| l.value.to_listener_setup(n))?;
            setup.listeners.push(listener);
            list.append(&mut n);
        }
        setup.notes = list;
        Ok(setup)
    }
}

// ---------------------------------------------------------------------------
// The inbound (server)

/// One user of an inbound.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Name (for logs).
    #[serde(default)]
    pub name: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `tls.ech` of an inbound: accepted only when not enabled.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboundEch {
    /// Must not be `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// ECH key lines.
    #[serde(default, deserialize_with = "de_listable")]
    pub key: Vec<String>,
    /// ECH key file.
    #[serde(default, deserialize_with = "de_opt_nonempty")]
    pub key_path: Option<String>,
    /// Deprecated in sing-box.
    #[serde(default)]
    pub pq_signature_schemes_enabled: Option<bool>,
    /// Deprecated in sing-box.
    #[serde(default)]
    pub dynamic_record_sizing_disabled: Option<bool>,
}

fn de_in_ech<'de, D: Deserializer<'de>>(d: D) -> Result<Option<InboundEch>, D::Error> {
    checked(d, |e: &InboundEch| check_enabled(e.enabled, ECH_SERVER))
}

/// `tls.reality` of an inbound: accepted only when not enabled.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundReality {
    /// Must not be `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Handshake server and its dial fields (not read).
    #[serde(default)]
    pub handshake: Option<IgnoredAny>,
    /// REALITY private key.
    #[serde(default)]
    pub private_key: Option<String>,
    /// Short ids.
    #[serde(default, deserialize_with = "de_listable")]
    pub short_id: Vec<String>,
    /// Clock skew limit.
    #[serde(default)]
    pub max_time_difference: Option<String>,
}

fn de_in_reality<'de, D: Deserializer<'de>>(d: D) -> Result<Option<InboundReality>, D::Error> {
    checked(d, |r: &InboundReality| check_enabled(r.enabled, REALITY))
}

/// `tls.acme` (on when it names domains): certificates from an ACME CA,
/// obtained and renewed while the server runs (see [`crate::acme`]).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundAcme {
    /// Domains the certificate covers; ACME is on when not empty.
    #[serde(default, deserialize_with = "de_listable")]
    pub domain: Vec<String>,
    /// Where the account and certificates are kept [default:
    /// `$STATE_DIRECTORY/acme` under systemd, else
    /// `$XDG_DATA_HOME/anytls/acme` or `~/.local/share/anytls/acme`].
    #[serde(default, deserialize_with = "de_opt_nonempty")]
    pub data_directory: Option<PathBuf>,
    /// Ignored (one certificate for every name).
    #[serde(default)]
    pub default_server_name: Option<String>,
    /// Contact address given to the CA.
    #[serde(default)]
    pub email: Option<String>,
    /// `letsencrypt` (default), `zerossl`, or a directory URL.
    #[serde(default)]
    pub provider: Option<String>,
    /// No HTTP-01.
    #[serde(default)]
    pub disable_http_challenge: Option<bool>,
    /// No TLS-ALPN-01.
    #[serde(default)]
    pub disable_tls_alpn_challenge: Option<bool>,
    /// HTTP-01 on this port instead of 80 (one that port 80 is forwarded to).
    #[serde(default)]
    pub alternative_http_port: Option<u16>,
    /// TLS-ALPN-01 also on this port (one that port 443 is forwarded to);
    /// it is always answered on the listen port.
    #[serde(default)]
    pub alternative_tls_port: Option<u16>,
    /// External account binding (ZeroSSL, some private CAs).
    #[serde(default)]
    pub external_account: Option<ExternalAccountOptions>,
    /// Refused: DNS-01 is not supported.
    #[serde(default)]
    pub dns01_challenge: Option<IgnoredAny>,
    /// Ours: a PEM file of roots trusted for the directory's HTTPS (a
    /// private CA).
    #[serde(default, deserialize_with = "de_opt_nonempty")]
    pub directory_ca: Option<PathBuf>,
}

/// `tls.acme.external_account`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalAccountOptions {
    /// The key identifier.
    #[serde(default)]
    pub key_id: String,
    /// The MAC key (base64url).
    #[serde(default)]
    pub mac_key: String,
}

impl fmt::Debug for ExternalAccountOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountOptions")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn de_acme<'de, D: Deserializer<'de>>(d: D) -> Result<Option<InboundAcme>, D::Error> {
    checked(d, |a: &InboundAcme| {
        if a.dns01_challenge.is_some() {
            Err(DNS01.to_owned())
        } else {
            Ok(())
        }
    })
}

/// The default `data_directory`: systemd's state directory, else the XDG
/// data directory.
pub fn default_acme_directory() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(state) = var("STATE_DIRECTORY") {
        // Several directories are separated by ':'; the first is ours.
        let first = state
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        return PathBuf::from(first).join("acme");
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return data.join("anytls/acme");
    }
    var("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/share/anytls/acme")
}

impl InboundAcme {
    /// The manager's settings; `listen` is the AnyTLS port (TLS-ALPN-01 is
    /// answered there).
    fn to_config(&self, listen: SocketAddr, n: &mut Notes) -> Result<AcmeConfig, ConfigError> {
        let dir = match &self.data_directory {
            Some(d) => d.clone(),
            None => {
                let d = default_acme_directory();
                n.taken(
                    "tls.acme.data_directory",
                    format!("not set: account and certificates go to {}", d.display()),
                );
                d
            }
        };
        let mut cfg = AcmeConfig::new(self.domain.clone(), dir);
        cfg.directory_url = AcmeConfig::provider_url(self.provider.as_deref().unwrap_or(""))
            .map_err(|e| invalid("tls.acme.provider", e))?;
        cfg.email = self.email.clone().filter(|e| !e.is_empty());
        cfg.directory_ca = self.directory_ca.clone();
        let any = |port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        cfg.tls_alpn_challenge = self.disable_tls_alpn_challenge != Some(true);
        cfg.http_addr = (self.disable_http_challenge != Some(true))
            .then(|| any(self.alternative_http_port.unwrap_or(80)));
        cfg.alternative_tls_addr = self
            .alternative_tls_port
            .filter(|p| cfg.tls_alpn_challenge && *p != listen.port())
            .map(any);
        if listen.port() != 443 && cfg.tls_alpn_challenge && cfg.alternative_tls_addr.is_none() {
            n.warn(
                "tls.acme",
                format!(
                    "TLS-ALPN-01 is answered on port {}, but the CA connects to port 443: it \
                     works only if 443 is forwarded here{}",
                    listen.port(),
                    match cfg.http_addr {
                        Some(a) => format!(" (else HTTP-01 on port {} is used)", a.port()),
                        None => String::new(),
                    }
                ),
            );
        }
        cfg.external_account =
            self.external_account
                .as_ref()
                .map(|e| crate::acme::ExternalAccount {
                    key_id: e.key_id.clone(),
                    mac_key: e.mac_key.clone(),
                });
        n.ignored_if(
            self.default_server_name
                .as_deref()
                .is_some_and(|s| !s.is_empty()),
            "tls.acme.default_server_name",
            "one certificate covers every domain",
        );
        cfg.validate().map_err(|e| invalid("tls.acme", e))?;
        Ok(cfg)
    }
}

with_tls_fields! {
/// sing-box inbound TLS options.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundTls {
    /// Private key, inline PEM (string or list of lines).
    #[serde(default, deserialize_with = "de_listable")]
    pub key: Vec<String>,
    /// Private key, PEM file.
    #[serde(default, deserialize_with = "de_opt_nonempty")]
    pub key_path: Option<PathBuf>,
    /// Refused unless empty, `no` or `request`.
    #[serde(default, deserialize_with = "de_client_auth")]
    pub client_authentication: Option<String>,
    /// Ignored (no client authentication).
    #[serde(default, deserialize_with = "de_listable")]
    pub client_certificate: Vec<String>,
    /// Ignored.
    #[serde(default, deserialize_with = "de_listable")]
    pub client_certificate_path: Vec<String>,
    /// Ignored.
    #[serde(default, deserialize_with = "de_listable")]
    pub client_certificate_public_key_sha256: Vec<String>,
    /// Certificates from an ACME CA, when it names domains.
    #[serde(default, deserialize_with = "de_acme")]
    pub acme: Option<InboundAcme>,
    /// Refused when enabled.
    #[serde(default, deserialize_with = "de_in_ech")]
    pub ech: Option<InboundEch>,
    /// Refused when enabled.
    #[serde(default, deserialize_with = "de_in_reality")]
    pub reality: Option<InboundReality>,
}
}

impl InboundTls {
    fn check(&self, n: &mut Notes) -> Result<(), ConfigError> {
        if self.enabled == Some(false) {
            return Err(invalid("tls.enabled", "AnyTLS always runs over TLS"));
        }
        let checks = [
            (
                "tls.acme",
                if self
                    .acme
                    .as_ref()
                    .is_some_and(|a| a.dns01_challenge.is_some())
                {
                    Err(DNS01.to_owned())
                } else {
                    Ok(())
                },
            ),
            (
                "tls.ech",
                check_enabled(self.ech.as_ref().and_then(|e| e.enabled), ECH_SERVER),
            ),
            (
                "tls.reality",
                check_enabled(self.reality.as_ref().and_then(|r| r.enabled), REALITY),
            ),
            (
                "tls.client_authentication",
                match self.client_authentication.as_deref() {
                    None | Some("" | "no" | "request") => Ok(()),
                    Some(_) => Err(CLIENT_AUTH.to_owned()),
                },
            ),
        ];
        for (field, res) in checks {
            res.map_err(|msg| invalid(field, msg))?;
        }
        n.ignored_if(
            self.client_authentication.as_deref() == Some("request")
                || !self.client_certificate.is_empty()
                || !self.client_certificate_path.is_empty()
                || !self.client_certificate_public_key_sha256.is_empty(),
            "tls.client_authentication",
            "client certificates are not asked for",
        );
        tls_notes(
            n,
            &self.curve_preferences,
            self.kernel_tx == Some(true) || self.kernel_rx == Some(true),
        );
        Ok(())
    }
}

with_listen_fields! {
    /// sing-box's `anytls` inbound with its listen fields, plus our `fallback`.
    #[derive(Clone, Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct InboundOptions {
        /// `"anytls"` (optional in a bare object).
        #[serde(default, rename = "type")]
        pub kind: Option<String>,
        /// sing-box tag.
        #[serde(default)]
        pub tag: Option<String>,
        /// Users.
        #[serde(default)]
        pub users: Vec<User>,
        /// Padding scheme lines (joined with `\n`, no trailing newline).
        #[serde(default, deserialize_with = "de_listable")]
        pub padding_scheme: Vec<String>,
        /// TLS. Without a certificate a self-signed one is made.
        #[serde(default)]
        pub tls: Option<InboundTls>,
        /// Ours: where connections that fail authentication go (`host:port`).
        #[serde(default)]
        pub fallback: Option<String>,
    }
}

/// A server ready to bind.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The server.
    pub config: ServerConfig,
    /// The names of the certificate, when it was generated (self-signed) here.
    pub self_signed: Option<Vec<String>>,
    /// `tls.server_name`, if given.
    pub server_name: Option<String>,
    /// Socket options of the listening socket ([`ListenOptions::bind`]).
    pub socket: ListenOptions,
    /// What was taken, ignored (and why) and warnings.
    pub notes: Vec<ConfigNote>,
}

impl InboundOptions {
    /// The TLS options, created empty if absent.
    pub fn tls_mut(&mut self) -> &mut InboundTls {
        self.tls.get_or_insert_with(InboundTls::default)
    }

    /// Builds the server configuration. Needs at least one user; loads or makes
    /// the certificate.
    pub fn to_server_setup(&self) -> Result<ServerSetup, ConfigError> {
        let mut notes = Notes::default();
        let setup = self.build(&mut notes)?;
        Ok(ServerSetup {
            notes: notes.list,
            ..setup
        })
    }

    fn build(&self, n: &mut Notes) -> Result<ServerSetup, ConfigError> {
        if let Some(kind) = self.kind.as_deref().filter(|k| *k != "anytls") {
            return Err(invalid(
                "type",
                format!("expected \"anytls\", got {kind:?}"),
            ));
        }
        self.listen_notes(n)?;
        let listen = listen_addr(
            self.listen.as_deref(),
            self.listen_port,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_SERVER_PORT),
        )?;
        if self.users.is_empty() {
            return Err(invalid("users", "at least one user is needed"));
        }
        if let Some(u) = self.users.iter().find(|u| u.password.is_empty()) {
            return Err(invalid(
                "users",
                format!("user {:?} has an empty password", u.name),
            ));
        }
        let tls = self.tls.clone().unwrap_or_default();
        tls.check(n)?;
        let server_name = tls.server_name.clone().filter(|s| !s.is_empty());
        let (server_tls, self_signed) = inbound_tls(&tls, listen, server_name.as_deref(), n)?;
        // With ACME, the first domain is the name clients use.
        let server_name = server_name.or_else(|| match &server_tls {
            ServerTls::Acme(a) => a.config().domains.first().cloned(),
            _ => None,
        });
        let mut cfg = ServerConfig::with_tls(String::new(), server_tls);
        cfg.users = self
            .users
            .iter()
            .map(|u| (u.name.clone(), u.password.clone()))
            .collect();
        cfg.alpn = tls.alpn.clone();
        let o = &mut cfg.tls_options;
        o.min_version = tls.min_version;
        o.max_version = tls.max_version;
        o.cipher_suites = tls.cipher_suites.clone();
        cfg.tls
            .build_with(&cfg.alpn, &cfg.tls_options)
            .map_err(|e| invalid("tls", e))?;
        if !self.padding_scheme.is_empty() {
            cfg.padding = PaddingScheme::parse(join_lines(&self.padding_scheme).into_bytes())
                .map_err(|e| invalid("padding_scheme", e))?;
        }
        if let Some(fb) = self.fallback.as_deref() {
            cfg.fallback = Some(resolve("fallback", fb)?);
        }
        if let Some(t) = self.udp_timeout {
            cfg.udp.idle_timeout = t;
            n.taken("udp_timeout", "idle timeout of UDP-over-TCP streams");
        }
        Ok(ServerSetup {
            listen,
            config: cfg,
            self_signed,
            server_name,
            socket: self.listen_options(),
            notes: Vec::new(),
        })
    }
}

/// What `anytls server -c FILE` read. Change fields (the program puts its
/// flags over them), then [`ServerOptions::to_server_setup`].
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// The anytls inbound (a mihomo listener is converted to one).
    pub inbound: InboundOptions,
    /// Where it was (`inbounds[0]`, `listeners[2]`; empty: the whole file).
    pub inbound_path: String,
    /// Remarks made while reading.
    pub notes: Vec<ConfigNote>,
    /// `file: ` for messages.
    pub(super) prefix: String,
}

impl ServerOptions {
    /// Options around one inbound (no file).
    pub fn new(inbound: InboundOptions) -> ServerOptions {
        ServerOptions {
            inbound,
            ..ServerOptions::default()
        }
    }

    /// Builds the server; errors and notes name the file and the field.
    pub fn to_server_setup(&self) -> Result<ServerSetup, ConfigError> {
        let (mut setup, mut notes) =
            under(&self.prefix, &self.inbound_path, |n| self.inbound.build(n))?;
        let mut list = self.notes.clone();
        list.append(&mut notes);
        setup.notes = list;
        Ok(setup)
    }
}

fn resolve(field: &'static str, addr: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .map_err(|e| invalid(field, format!("{addr:?}: {e}")))?
        .next()
        .ok_or_else(|| invalid(field, format!("{addr:?} resolves to nothing")))
}

/// Names for a self-signed certificate: the server name (or `localhost`) and
/// the listen IP when it is a specific one.
pub fn self_signed_names(server_name: Option<&str>, listen: SocketAddr) -> Vec<String> {
    let mut names = vec![server_name.unwrap_or("localhost").to_owned()];
    if !listen.ip().is_unspecified() {
        let ip = listen.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

fn inbound_tls(
    tls: &InboundTls,
    listen: SocketAddr,
    server_name: Option<&str>,
    n: &mut Notes,
) -> Result<(ServerTls, Option<Vec<String>>), ConfigError> {
    let acme = tls.acme.as_ref().filter(|a| !a.domain.is_empty());
    let has_files = tls.certificate_path.is_some() || tls.key_path.is_some();
    let has_inline = !tls.certificate.is_empty() || !tls.key.is_empty();
    if let Some(acme) = acme {
        if has_files || has_inline {
            return Err(invalid(
                "tls.acme",
                "give a certificate or ACME domains, not both",
            ));
        }
        let cfg = acme.to_config(listen, n)?;
        if let Some(name) =
            server_name.filter(|s| !cfg.domains.iter().any(|d| d.eq_ignore_ascii_case(s)))
        {
            n.warn(
                "tls.server_name",
                format!(
                    "{name} is not one of tls.acme.domain: the certificate will not cover it \
                     (clients must use {})",
                    cfg.domains.join(" or ")
                ),
            );
        }
        let manager = crate::acme::Acme::new(cfg).map_err(|e| invalid("tls.acme", e))?;
        return Ok((ServerTls::Acme(manager), None));
    }
    let (identity, names) = inbound_identity(tls, listen, server_name, has_files, has_inline)?;
    Ok((ServerTls::Identity(identity), names))
}

fn inbound_identity(
    tls: &InboundTls,
    listen: SocketAddr,
    server_name: Option<&str>,
    has_files: bool,
    has_inline: bool,
) -> Result<(Identity, Option<Vec<String>>), ConfigError> {
    if has_files && has_inline {
        return Err(invalid(
            "tls",
            "give certificate_path/key_path or certificate/key, not both",
        ));
    }
    if has_files {
        let (Some(c), Some(k)) = (&tls.certificate_path, &tls.key_path) else {
            return Err(invalid("tls", "certificate_path and key_path go together"));
        };
        return Ok((Identity::from_pem_files(c, k)?, None));
    }
    if has_inline {
        if tls.certificate.is_empty() || tls.key.is_empty() {
            return Err(invalid("tls", "certificate and key go together"));
        }
        let cert_pem = join_lines(&tls.certificate);
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("tls.certificate", e))?;
        if certs.is_empty() {
            return Err(invalid("tls.certificate", "no PEM certificate found"));
        }
        let key = PrivateKeyDer::from_pem_slice(join_lines(&tls.key).as_bytes())
            .map_err(|e| invalid("tls.key", e))?;
        return Ok((Identity { certs, key }, None));
    }
    let names = self_signed_names(server_name, listen);
    Ok((Identity::self_signed(&names)?, Some(names)))
}

// ---------------------------------------------------------------------------
// Whole files

/// The top level of a sing-box config, as far as choosing needs.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    inbounds: Option<Vec<ProbeEntry>>,
    #[serde(default)]
    outbounds: Option<Vec<ProbeEntry>>,
    #[serde(default)]
    route: Option<IgnoredAny>,
}

const PROBE: &str = "a JSON object: an anytls entry or a sing-box config";

const LOCAL_KINDS: [&str; 3] = ["mixed", "socks", "http"];

/// A sing-box client config: a bare outbound, or a whole config.
pub(super) fn client_options(
    src: &Source<'_>,
    select: Option<&str>,
) -> Result<ClientOptions, ConfigError> {
    let prefix = src.prefix();
    let probe: Probe = src.parse_map(PROBE)?;
    if probe.inbounds.is_none() && probe.outbounds.is_none() {
        return Ok(ClientOptions {
            outbound: src.parse_as()?,
            prefix,
            ..ClientOptions::default()
        });
    }
    let mut notes = Notes::new(prefix.clone());
    let outs = probe.outbounds.unwrap_or_default();
    let chosen = choose(&outs, "outbounds", select, &mut notes)?;
    let ins = probe.inbounds.unwrap_or_default();
    let mut local = Vec::new();
    for (i, e) in ins.iter().enumerate() {
        if LOCAL_KINDS.contains(&e.kind.as_deref().unwrap_or("")) {
            local.push(i);
        } else {
            notes.ignored_if(
                true,
                &format!("inbounds[{i}]"),
                &format!(
                    "{}: only mixed, socks and http inbounds become local listeners",
                    e.describe()
                ),
            );
        }
    }
    notes.ignored_if(
        probe.route.is_some(),
        "route",
        "there is no routing here: every connection goes through the anytls outbound",
    );
    let (outbound, inbounds): (OutboundOptions, Vec<(usize, LocalInbound)>) =
        src.pick(("outbounds", chosen), ("inbounds", &local))?;
    Ok(ClientOptions {
        outbound,
        outbound_path: format!("outbounds[{chosen}]"),
        listeners: inbounds
            .into_iter()
            .map(|(i, value)| Located {
                path: format!("inbounds[{i}]"),
                value,
            })
            .collect(),
        notes: notes.list,
        prefix,
    })
}

/// A sing-box server config: a bare inbound, or a whole config.
pub(super) fn server_options(
    src: &Source<'_>,
    select: Option<&str>,
) -> Result<ServerOptions, ConfigError> {
    let prefix = src.prefix();
    let probe: Probe = src.parse_map(PROBE)?;
    if probe.inbounds.is_none() && probe.outbounds.is_none() {
        return Ok(ServerOptions {
            inbound: src.parse_as()?,
            prefix,
            ..ServerOptions::default()
        });
    }
    let mut notes = Notes::new(prefix.clone());
    let ins = probe
        .inbounds
        .ok_or_else(|| ConfigError::NotFound("no \"inbounds\" list in the config".into()))?;
    let chosen = choose(&ins, "inbounds", select, &mut notes)?;
    let (inbound, _): (InboundOptions, Vec<(usize, IgnoredAny)>) =
        src.pick(("inbounds", chosen), ("outbounds", &[]))?;
    Ok(ServerOptions {
        inbound,
        inbound_path: format!("inbounds[{chosen}]"),
        notes: notes.list,
        prefix,
    })
}
