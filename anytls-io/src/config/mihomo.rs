//! mihomo (Clash.Meta) YAML: `proxies` entries of `type: anytls` for the
//! client, `listeners` of `type: anytls` for the server, and the client's
//! local ports (`port`, `socks-port`, `mixed-port`, `mixed`/`socks`/`http`
//! listeners). Each is converted to the sing-box shape
//! ([`OutboundOptions`], [`InboundOptions`], [`LocalInbound`]) so that one
//! set of rules builds the configuration.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::singbox::{
    CLIENT_CERT, ClientOptions, ECH_CLIENT, InboundOptions, InboundTls, LocalInbound, LocalUser,
    Located, OutboundOptions, OutboundTls, REALITY, ServerOptions, User, de_routing_mark,
    utls_warning,
};
use super::source::{ProbeEntry, Source, choose};
use super::{ConfigError, Notes, de_listable, invalid};
use crate::dial::DomainStrategy;
use crate::tls::{hex32, parse_pin};

/// A port: a number, or a string holding one (mihomo also takes lists and
/// ranges, `"200,302"`, `"401-429"`, which are refused: one port per listener
/// here).
fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct P;
    impl Visitor<'_> for P {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| E::custom(format!("port {v} is above 65535")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| E::custom(format!("port {v} is not a port")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
            v.trim().parse::<u16>().map_err(|_| {
                E::custom(format!(
                    "port {v:?}: give one port (lists and ranges of ports are not supported)"
                ))
            })
        }
    }
    d.deserialize_any(P)
}

fn de_opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    de_port(d).map(Some)
}

/// mihomo's certificate fingerprint: SHA-256 hex, colons allowed.
fn de_fingerprint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    let pin = parse_pin(&s.replace(':', "")).map_err(de::Error::custom)?;
    Ok(Some(hex32(&pin)))
}

fn refuse<'de, D: Deserializer<'de>, T>(d: D, msg: &str) -> Result<T, D::Error> {
    IgnoredAny::deserialize(d)?;
    Err(de::Error::custom(msg))
}

fn de_refuse_dialer_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    Err(de::Error::custom(
        "dialer-proxy is not supported: this program has no other proxies, and dialing \
         the server directly would bypass it; remove it to connect directly",
    ))
}

fn de_refuse_reality<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IgnoredAny>, D::Error> {
    refuse(d, REALITY)
}

fn de_refuse_client_cert<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    refuse(d, CLIENT_CERT)
}

/// mihomo `ech-opts`: refused when enabled.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MihomoEch {
    /// Must not be `true`.
    #[serde(default)]
    pub enable: Option<bool>,
    /// ECH config (base64).
    #[serde(default)]
    pub config: Option<String>,
    /// Name for the HTTPS record query.
    #[serde(default)]
    pub query_server_name: Option<String>,
}

fn de_ech<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MihomoEch>, D::Error> {
    let e = MihomoEch::deserialize(d)?;
    if e.enable == Some(true) {
        return Err(de::Error::custom(ECH_CLIENT.replace("tls.ech", "ech-opts")));
    }
    Ok(Some(e))
}

/// A mihomo `anytls` proxy (the documented fields, its TLS fields and the
/// common proxy fields).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MihomoProxy {
    /// Display name (what `--proxy` selects).
    pub name: String,
    /// `anytls`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Server host.
    pub server: String,
    /// Server port.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// The password.
    pub password: String,
    /// ALPN protocols.
    #[serde(default, deserialize_with = "de_listable")]
    pub alpn: Vec<String>,
    /// TLS server name.
    #[serde(default)]
    pub sni: Option<String>,
    /// TLS server name (the VMess/VLESS spelling).
    #[serde(default)]
    pub servername: Option<String>,
    /// uTLS fingerprint: accepted with a warning.
    #[serde(default)]
    pub client_fingerprint: Option<String>,
    /// Accept any certificate.
    #[serde(default)]
    pub skip_cert_verify: Option<bool>,
    /// SHA-256 of the server certificate (hex, colons allowed): a pin.
    #[serde(default, deserialize_with = "de_fingerprint")]
    pub fingerprint: Option<String>,
    /// UDP: always relayed here (UDP over TCP).
    #[serde(default)]
    pub udp: Option<bool>,
    /// Pool check interval, seconds.
    #[serde(default)]
    pub idle_session_check_interval: Option<u64>,
    /// Idle session timeout, seconds.
    #[serde(default)]
    pub idle_session_timeout: Option<u64>,
    /// Idle sessions kept.
    #[serde(default)]
    pub min_idle_session: Option<usize>,
    /// `tls: true` (AnyTLS is always TLS).
    #[serde(default)]
    pub tls: Option<bool>,
    /// TCP Fast Open.
    #[serde(default)]
    pub tfo: Option<bool>,
    /// Multipath TCP.
    #[serde(default)]
    pub mptcp: Option<bool>,
    /// Bind to this interface.
    #[serde(default)]
    pub interface_name: Option<String>,
    /// Firewall mark.
    #[serde(default, deserialize_with = "de_routing_mark")]
    pub routing_mark: Option<u32>,
    /// `dual`, `ipv4`, `ipv6`, `ipv4-prefer`, `ipv6-prefer`.
    #[serde(default, deserialize_with = "de_ip_version")]
    pub ip_version: Option<DomainStrategy>,
    /// Refused when set.
    #[serde(default, deserialize_with = "de_refuse_dialer_proxy")]
    pub dialer_proxy: Option<String>,
    /// Ignored (AnyTLS multiplexes itself).
    #[serde(default)]
    pub smux: Option<IgnoredAny>,
    /// Refused (client certificates).
    #[serde(default, deserialize_with = "de_refuse_client_cert")]
    pub certificate: Option<String>,
    /// Refused (client certificates).
    #[serde(default, deserialize_with = "de_refuse_client_cert")]
    pub private_key: Option<String>,
    /// Refused.
    #[serde(default, deserialize_with = "de_refuse_reality")]
    pub reality_opts: Option<IgnoredAny>,
    /// Refused when enabled.
    #[serde(default, deserialize_with = "de_ech")]
    pub ech_opts: Option<MihomoEch>,
}

impl fmt::Debug for MihomoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MihomoProxy")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("port", &self.port)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn de_ip_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DomainStrategy>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(Some(match s.as_str() {
        "" | "dual" => DomainStrategy::AsIs,
        "ipv4" => DomainStrategy::Ipv4Only,
        "ipv6" => DomainStrategy::Ipv6Only,
        "ipv4-prefer" => DomainStrategy::PreferIpv4,
        "ipv6-prefer" => DomainStrategy::PreferIpv6,
        _ => {
            return Err(de::Error::custom(format!(
                "{s:?}: use dual, ipv4, ipv6, ipv4-prefer or ipv6-prefer"
            )));
        }
    }))
}

impl MihomoProxy {
    /// The same client as a sing-box outbound, and notes on what has no
    /// counterpart.
    pub(crate) fn to_outbound(&self, n: &mut Notes) -> Result<OutboundOptions, ConfigError> {
        if self.kind != "anytls" {
            return Err(super::invalid(
                "type",
                format!("expected \"anytls\", got {:?}", self.kind),
            ));
        }
        if self.tls == Some(false) {
            return Err(super::invalid("tls", "AnyTLS always runs over TLS"));
        }
        let secs = |s: Option<u64>| s.map(Duration::from_secs);
        let mut tls = OutboundTls {
            server_name: self.sni.clone().or_else(|| self.servername.clone()),
            alpn: self.alpn.clone(),
            ..OutboundTls::default()
        };
        if let Some(pin) = &self.fingerprint {
            tls.pin_sha256 = Some(pin.clone());
            n.ignored_if(
                self.skip_cert_verify == Some(true),
                "skip-cert-verify",
                "the certificate is checked against fingerprint",
            );
            n.taken(
                "fingerprint",
                "accept only the server certificate with this SHA-256 (a CA's fingerprint does not match)",
            );
        } else if self.skip_cert_verify == Some(true) {
            tls.insecure = Some(true);
        }
        if let Some(fp) = self.client_fingerprint.as_deref().filter(|f| !f.is_empty()) {
            n.warn("client-fingerprint", utls_warning(fp));
        }
        n.ignored_if(
            self.udp == Some(false),
            "udp",
            "UDP is relayed anyway (UDP over TCP); SOCKS5 UDP ASSOCIATE is served",
        );
        n.ignored_if(
            self.smux.is_some(),
            "smux",
            "AnyTLS multiplexes streams over its sessions itself",
        );
        Ok(OutboundOptions {
            kind: Some("anytls".into()),
            tag: Some(self.name.clone()),
            server: Some(self.server.clone()),
            server_port: Some(self.port),
            password: Some(self.password.clone()),
            idle_session_check_interval: secs(self.idle_session_check_interval),
            idle_session_timeout: secs(self.idle_session_timeout),
            min_idle_session: self.min_idle_session,
            tls: Some(tls),
            tcp_fast_open: self.tfo,
            tcp_multi_path: self.mptcp,
            bind_interface: self.interface_name.clone(),
            routing_mark: self.routing_mark,
            domain_strategy: self.ip_version,
            ..OutboundOptions::default()
        })
    }
}

/// mihomo `users` of an anytls listener: a map name → password, in order.
fn de_user_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<User>, D::Error> {
    struct M;
    impl<'de> Visitor<'de> for M {
        type Value = Vec<User>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of user name to password")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<User>, A::Error> {
            let mut out = Vec::new();
            while let Some((name, password)) = map.next_entry::<String, String>()? {
                out.push(User { name, password });
            }
            Ok(out)
        }
    }
    d.deserialize_map(M)
}

fn de_refuse_ech_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    refuse(
        d,
        "Encrypted Client Hello is not available in this build (rustls has no server-side ECH); remove ech-key",
    )
}

fn de_refuse_client_auth<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "" | "request" => Ok(Some(s)),
        _ => Err(de::Error::custom(
            "verifying client certificates is not supported by this program; serving without it \
             would let clients in without one. Remove client-auth-type",
        )),
    }
}

fn de_refuse_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    Err(de::Error::custom(
        "proxy (sending this listener's traffic to another proxy) is not supported: \
         connections would go out directly; remove it",
    ))
}

/// A mihomo `anytls` listener.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MihomoListener {
    /// Name.
    pub name: String,
    /// `anytls`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Port.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// Listen address (default all).
    #[serde(default)]
    pub listen: Option<String>,
    /// Users: name → password.
    #[serde(default, deserialize_with = "de_user_map")]
    pub users: Vec<User>,
    /// Certificate: PEM text or a file.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Private key: PEM text or a file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// Padding scheme (the text, lines separated by newlines).
    #[serde(default)]
    pub padding_scheme: Option<String>,
    /// Refused unless empty or `request`.
    #[serde(default, deserialize_with = "de_refuse_client_auth")]
    pub client_auth_type: Option<String>,
    /// Ignored (no client authentication).
    #[serde(default)]
    pub client_auth_cert: Option<String>,
    /// Refused.
    #[serde(default, deserialize_with = "de_refuse_ech_key")]
    pub ech_key: Option<String>,
    /// Ignored: no rules here.
    #[serde(default)]
    pub rule: Option<String>,
    /// Refused when set.
    #[serde(default, deserialize_with = "de_refuse_proxy")]
    pub proxy: Option<String>,
}

impl fmt::Debug for MihomoListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MihomoListener")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("listen", &self.listen)
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

/// PEM text (has a `-----BEGIN` line) or a file name.
fn pem_or_path(s: &str) -> (Vec<String>, Option<PathBuf>) {
    if s.contains("-----BEGIN") {
        (s.lines().map(str::to_owned).collect(), None)
    } else {
        (Vec::new(), Some(PathBuf::from(s)))
    }
}

impl MihomoListener {
    /// The same server as a sing-box inbound.
    pub(crate) fn to_inbound(&self, n: &mut Notes) -> Result<InboundOptions, ConfigError> {
        if self.kind != "anytls" {
            return Err(super::invalid(
                "type",
                format!("expected \"anytls\", got {:?}", self.kind),
            ));
        }
        let mut tls = InboundTls::default();
        if let Some(c) = &self.certificate {
            (tls.certificate, tls.certificate_path) = pem_or_path(c);
        }
        if let Some(k) = &self.private_key {
            (tls.key, tls.key_path) = pem_or_path(k);
        }
        if self.certificate.is_none() && self.private_key.is_none() {
            n.taken(
                "certificate",
                "none given: a self-signed certificate is made (clients need its pin or skip-cert-verify)",
            );
        }
        n.ignored_if(
            self.client_auth_cert.is_some() || self.client_auth_type.is_some(),
            "client-auth-type",
            "client certificates are not asked for",
        );
        n.ignored_if(
            self.rule.is_some(),
            "rule",
            "there are no rules here: destinations are used as requested",
        );
        Ok(InboundOptions {
            kind: Some("anytls".into()),
            tag: Some(self.name.clone()),
            listen: self.listen.clone(),
            listen_port: Some(self.port),
            users: self.users.clone(),
            padding_scheme: self
                .padding_scheme
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim_end_matches('\n').to_owned())
                .collect(),
            tls: Some(tls),
            ..InboundOptions::default()
        })
    }
}

/// A user of a mihomo local listener.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MihomoUser {
    username: String,
    password: String,
}

/// A mihomo `mixed`, `socks` or `http` listener.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MihomoLocal {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "de_port")]
    port: u16,
    #[serde(default)]
    listen: Option<String>,
    /// `None`: the global `authentication`; `Some([])`: none.
    #[serde(default)]
    users: Option<Vec<MihomoUser>>,
    #[serde(default)]
    udp: Option<bool>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default, deserialize_with = "de_refuse_proxy")]
    proxy: Option<String>,
    #[serde(default, deserialize_with = "de_refuse_https_listener")]
    certificate: Option<String>,
    #[serde(default, deserialize_with = "de_refuse_https_listener")]
    private_key: Option<String>,
}

fn de_refuse_https_listener<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    refuse(
        d,
        "TLS on local proxy listeners is not supported; remove certificate and private-key",
    )
}

/// The top level of a mihomo config, as far as this program reads it.
#[derive(Deserialize)]
#[serde(
    rename_all = "kebab-case",
    expecting = "a YAML map: a mihomo config or an anytls entry"
)]
struct Probe {
    #[serde(default)]
    proxies: Option<Vec<ProbeEntry>>,
    #[serde(default)]
    listeners: Option<Vec<ProbeEntry>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "de_opt_port")]
    port: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_port")]
    socks_port: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_port")]
    mixed_port: Option<u16>,
    #[serde(default)]
    bind_address: Option<String>,
    #[serde(default)]
    allow_lan: Option<bool>,
    // A list; one string is taken too (and a mis-shaped value is never
    // echoed in an error: it holds passwords).
    #[serde(default, deserialize_with = "de_listable")]
    authentication: Vec<String>,
    #[serde(default)]
    skip_auth_prefixes: Option<IgnoredAny>,
    #[serde(default)]
    lan_allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    lan_disallowed_ips: Option<Vec<String>>,
    #[serde(default)]
    redir_port: Option<IgnoredAny>,
    #[serde(default)]
    tproxy_port: Option<IgnoredAny>,
    #[serde(default)]
    global_client_fingerprint: Option<String>,
    #[serde(default)]
    rules: Option<IgnoredAny>,
    #[serde(default)]
    proxy_groups: Option<IgnoredAny>,
}

impl Probe {
    fn unsupported(&self, src: &Source<'_>, what: &str) -> ConfigError {
        let guess = if src.guessed {
            " (the format was not recognised: sing-box JSON starts with {, mihomo YAML is a map)"
        } else {
            ""
        };
        ConfigError::Unsupported(format!(
            "{}: not a mihomo config with {what}, nor a bare anytls entry{guess}",
            src.name
        ))
    }
}

fn parse_probe(src: &Source<'_>) -> Result<Probe, ConfigError> {
    src.parse_map::<Probe>("a YAML map: a mihomo config or an anytls entry")
        .map_err(|e| match e {
            ConfigError::Parse { .. } if src.guessed => ConfigError::Unsupported(format!(
                "{}: unrecognised format: neither sing-box JSON nor mihomo YAML ({e})",
                src.name
            )),
            e => e,
        })
}

/// `user:pass` entries of mihomo's `authentication`.
fn authentication(list: &[String], n: &mut Notes) -> Result<Vec<LocalUser>, ConfigError> {
    let users = list
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.split_once(':')
                .map(|(u, p)| LocalUser {
                    username: u.to_owned(),
                    password: p.to_owned(),
                })
                .ok_or_else(|| {
                    super::invalid(
                        n.field(&format!("authentication[{i}]")),
                        "expected \"user:password\"",
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(users)
}

/// A mihomo client config (or a bare anytls proxy).
pub(super) fn client_options(
    src: &Source<'_>,
    select: Option<&str>,
) -> Result<ClientOptions, ConfigError> {
    let prefix = src.prefix();
    let probe = parse_probe(src)?;
    let mut notes = Notes::new(prefix.clone());
    let Some(proxies) = &probe.proxies else {
        if probe.kind.as_deref() == Some("anytls") {
            let proxy: MihomoProxy = src.parse_as()?;
            let (outbound, notes) = super::under(&prefix, "", |n| proxy.to_outbound(n))?;
            return Ok(ClientOptions {
                outbound,
                notes,
                prefix,
                ..ClientOptions::default()
            });
        }
        return Err(probe.unsupported(src, "proxies"));
    };
    let chosen = choose(proxies, "proxies", select, &mut notes)?;
    let listeners = probe.listeners.as_deref().unwrap_or_default();
    let local: Vec<usize> = (0..listeners.len())
        .filter(|&i| {
            matches!(
                listeners[i].kind.as_deref(),
                Some("mixed" | "socks" | "http")
            )
        })
        .collect();
    for (i, l) in listeners.iter().enumerate() {
        notes.ignored_if(
            !local.contains(&i),
            &format!("listeners[{i}]"),
            &format!(
                "{}: only mixed, socks and http listeners are served",
                l.describe()
            ),
        );
    }
    notes.ignored_if(
        probe.rules.is_some() || probe.proxy_groups.is_some(),
        "rules/proxy-groups",
        "there is no routing here: every connection goes through the anytls proxy",
    );
    // Address filters of the ports: not implemented, so a filter that
    // narrows who may connect is refused rather than dropped (the ports
    // would be open to every address).
    if probe.allow_lan == Some(true) {
        let everyone = ["0.0.0.0/0", "::/0"];
        let narrowed = probe
            .lan_allowed_ips
            .as_ref()
            .is_some_and(|l| !l.iter().any(|a| a == everyone[0]));
        let denied = probe
            .lan_disallowed_ips
            .as_ref()
            .is_some_and(|l| !l.is_empty());
        if narrowed || denied {
            return Err(invalid(
                if narrowed {
                    "lan-allowed-ips"
                } else {
                    "lan-disallowed-ips"
                },
                "address filters on the local ports are not supported, and the ports \
                 would be open to every address; remove them and use authentication, \
                 or set allow-lan: false",
            ));
        }
    }
    notes.ignored_if(
        probe.redir_port.is_some() || probe.tproxy_port.is_some(),
        "redir-port/tproxy-port",
        "transparent proxying is not served; only port, socks-port and mixed-port",
    );
    if let Some(fp) = probe
        .global_client_fingerprint
        .as_deref()
        .filter(|f| !f.is_empty())
    {
        notes.warn(
            "global-client-fingerprint",
            super::singbox::utls_warning(fp),
        );
    }
    notes.ignored_if(
        probe.skip_auth_prefixes.is_some(),
        "skip-auth-prefixes",
        "every client authenticates when users are set",
    );
    let (proxy, ls): (MihomoProxy, Vec<(usize, MihomoLocal)>) =
        src.pick(("proxies", chosen), ("listeners", &local))?;
    let path = format!("proxies[{chosen}]");
    let (outbound, mut pn) = super::under(&prefix, &path, |n| proxy.to_outbound(n))?;
    notes.list.append(&mut pn);

    let auth = authentication(&probe.authentication, &mut notes)?;
    // Ports: localhost only unless allow-lan, then bind-address ('*': all).
    let host = if probe.allow_lan == Some(true) {
        match probe.bind_address.as_deref() {
            None | Some("" | "*") => "0.0.0.0".to_owned(),
            Some(a) => a.to_owned(),
        }
    } else {
        "127.0.0.1".to_owned()
    };
    let mut locals = Vec::new();
    for (key, port, kind) in [
        ("port", probe.port, "http"),
        ("socks-port", probe.socks_port, "socks"),
        ("mixed-port", probe.mixed_port, "mixed"),
    ] {
        if let Some(port) = port.filter(|p| *p != 0) {
            locals.push(Located {
                path: key.to_owned(),
                value: LocalInbound {
                    kind: kind.to_owned(),
                    tag: Some(key.to_owned()),
                    listen: Some(host.clone()),
                    listen_port: Some(port),
                    users: auth.clone(),
                    ..LocalInbound::default()
                },
            });
        }
    }
    for (i, l) in ls {
        let ln = format!("listeners[{i}]");
        notes.ignored_if(
            l.rule.is_some(),
            &format!("{ln}.rule"),
            "there are no rules here",
        );
        notes.ignored_if(
            l.udp.is_some(),
            &format!("{ln}.udp"),
            "SOCKS5 UDP ASSOCIATE is always served",
        );
        debug_assert!(l.proxy.is_none() && l.certificate.is_none() && l.private_key.is_none());
        let users = match l.users {
            None => auth.clone(),
            Some(u) => u
                .into_iter()
                .map(|u| LocalUser {
                    username: u.username,
                    password: u.password,
                })
                .collect(),
        };
        locals.push(Located {
            path: ln,
            value: LocalInbound {
                kind: l.kind,
                tag: Some(l.name),
                listen: Some(l.listen.unwrap_or_else(|| host.clone())),
                listen_port: Some(l.port),
                users,
                ..LocalInbound::default()
            },
        });
    }
    Ok(ClientOptions {
        outbound,
        outbound_path: path,
        listeners: locals,
        notes: notes.list,
        prefix,
    })
}

/// A mihomo server config: its anytls listener (or a bare one).
pub(super) fn server_options(
    src: &Source<'_>,
    select: Option<&str>,
) -> Result<ServerOptions, ConfigError> {
    let prefix = src.prefix();
    let probe = parse_probe(src)?;
    let mut notes = Notes::new(prefix.clone());
    let Some(listeners) = &probe.listeners else {
        if probe.kind.as_deref() == Some("anytls") {
            let l: MihomoListener = src.parse_as()?;
            let (inbound, notes) = super::under(&prefix, "", |n| l.to_inbound(n))?;
            return Ok(ServerOptions {
                inbound,
                notes,
                prefix,
                ..ServerOptions::default()
            });
        }
        return Err(probe.unsupported(src, "listeners"));
    };
    let chosen = choose(listeners, "listeners", select, &mut notes)?;
    let (l, _): (MihomoListener, Vec<(usize, IgnoredAny)>) =
        src.pick(("listeners", chosen), ("proxies", &[]))?;
    let path = format!("listeners[{chosen}]");
    let (inbound, mut ln) = super::under(&prefix, &path, |n| l.to_inbound(n))?;
    notes.list.append(&mut ln);
    Ok(ServerOptions {
        inbound,
        inbound_path: path,
        notes: notes.list,
        prefix,
    })
}
