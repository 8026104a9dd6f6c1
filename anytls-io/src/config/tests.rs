use super::*;
use crate::proxy::{Protocols, ProxyUser};
use crate::tls::{Identity, TlsVersion, Verification};

fn parse_client_json(text: &str) -> Result<ClientOptions, ConfigError> {
    parse_client_config(text, None, Some(ConfigFormat::Json), None)
}

fn parse_server_json(text: &str) -> Result<ServerOptions, ConfigError> {
    parse_server_config(text, None, Some(ConfigFormat::Json), None)
}

/// The first listener's address.
fn first_listen(s: &ClientSetup) -> Option<SocketAddr> {
    s.listeners.first().map(|l| l.addr)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn go_durations() {
    let ok = [
        ("0", Duration::ZERO),
        ("-0", Duration::ZERO),
        ("+0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("30s", Duration::from_secs(30)),
        ("1m30s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
        ("500ms", ms(500)),
        ("1.5h", Duration::from_secs(5400)),
        ("1.5s", ms(1500)),
        (".5s", ms(500)),
        ("5.s", Duration::from_secs(5)),
        ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
        ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
        ("100us", Duration::from_micros(100)),
        ("100µs", Duration::from_micros(100)),
        ("100μs", Duration::from_micros(100)),
        ("7ns", Duration::from_nanos(7)),
        ("1d", Duration::from_secs(86400)),
        // Exact, not floating point: 0.1 + 0.2 of a second.
        ("0.1s0.2s", ms(300)),
        ("1.000000001s", Duration::new(1, 1)),
        // Below a nanosecond is cut off, as in Go.
        ("1.0000000019s", Duration::new(1, 1)),
        (
            "0.3333333333333333333333333333333h",
            Duration::new(1199, 999_999_999),
        ),
        (
            "2562047h47m16.854775807s",
            Duration::from_nanos(i64::MAX as u64),
        ),
    ];
    for (s, want) in ok {
        assert_eq!(parse_go_duration(s), Ok(want), "{s}");
    }
    for s in [
        "",
        "s",
        "1",
        "30",
        ".s",
        "1x",
        "1sec",
        "-1s",
        "1s-",
        "1.2.3s",
        " 1s",
        "1 s",
        "2562047h47m16.854775808s",
        "99999999999999999999h",
    ] {
        assert!(parse_go_duration(s).is_err(), "{s:?} should fail");
    }
    let e = parse_go_duration("10").unwrap_err();
    assert!(e.to_string().contains("missing unit"), "{e}");
}

#[test]
fn go_duration_format_round_trips() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(3600), "1h0m0s"),
        (Duration::from_secs(5400), "1h30m0s"),
        (ms(500), "500ms"),
        (ms(1500), "1.5s"),
        (Duration::from_micros(1500), "1.5ms"),
        (Duration::from_nanos(1500), "1.5µs"),
        (Duration::from_nanos(7), "7ns"),
        (Duration::new(3723, 4_005_006), "1h2m3.004005006s"),
    ];
    for (d, s) in cases {
        assert_eq!(format_go_duration(d), s);
        assert_eq!(parse_go_duration(s), Ok(d));
    }
    for n in [
        1u64,
        999,
        1_000,
        123_456_789,
        59_999_999_999,
        86_400_000_000_001,
    ] {
        let d = Duration::from_nanos(n);
        assert_eq!(parse_go_duration(&format_go_duration(d)), Ok(d), "{n}");
    }
}

#[test]
fn uri_parse_basic_and_default_port() {
    let u =
        AnytlsUri::parse("anytls://secret@example.com/?sni=cdn.example.com&insecure=1").unwrap();
    assert_eq!(u.password.as_deref(), Some("secret"));
    assert_eq!(u.host, "example.com");
    assert_eq!(u.port, 443);
    assert_eq!(u.sni.as_deref(), Some("cdn.example.com"));
    assert!(u.insecure);
    assert_eq!(u.server(), "example.com:443");

    let u = AnytlsUri::parse("anytls://example.com:8443").unwrap();
    assert_eq!(u.password, None);
    assert_eq!((u.host.as_str(), u.port), ("example.com", 8443));
    assert!(!u.insecure);
    assert_eq!(u.to_string(), "anytls://example.com:8443/");

    let u = AnytlsUri::parse("ANYTLS://pw@h:1?insecure=0#My%20Server").unwrap();
    assert_eq!(u.name.as_deref(), Some("My Server"));
    assert!(!u.insecure);
}

#[test]
fn uri_percent_encoding() {
    let u = AnytlsUri::parse("anytls://p%40ss%3Aw%2Frd%25%20x+y@1.2.3.4:8443/?sni=a%2Eb").unwrap();
    // '+' in the userinfo is a plus; in the query it would be a space.
    assert_eq!(u.password.as_deref(), Some("p@ss:w/rd% x+y"));
    assert_eq!(u.sni.as_deref(), Some("a.b"));
    let s = u.to_string();
    assert_eq!(
        s,
        "anytls://p%40ss%3Aw%2Frd%25%20x%2By@1.2.3.4:8443/?sni=a.b"
    );
    assert_eq!(AnytlsUri::parse(&s).unwrap(), u);

    let q = AnytlsUri::parse("anytls://x@h/?sni=a+b&foo=1%262").unwrap();
    assert_eq!(q.sni.as_deref(), Some("a b"));
    assert_eq!(q.extra, vec![("foo".to_owned(), "1&2".to_owned())]);

    // Non-ASCII passwords survive as UTF-8.
    let u = AnytlsUri {
        password: Some("пароль密码 &=?#".into()),
        host: "example.com".into(),
        port: 443,
        ..AnytlsUri::default()
    };
    assert_eq!(AnytlsUri::parse(&u.to_string()).unwrap(), u);

    for bad in ["anytls://p%4@h", "anytls://p%zz@h", "anytls://%ff%fe@h"] {
        assert!(AnytlsUri::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn uri_ipv6_hosts() {
    let u = AnytlsUri::parse("anytls://pw@[2001:db8::1]:8443/?sni=example.com").unwrap();
    assert_eq!(u.host, "2001:db8::1");
    assert_eq!(u.port, 8443);
    assert_eq!(u.server(), "[2001:db8::1]:8443");
    assert_eq!(
        u.to_string(),
        "anytls://pw@[2001:db8::1]:8443/?sni=example.com"
    );
    let d = AnytlsUri::parse("anytls://pw@[::1]").unwrap();
    assert_eq!((d.host.as_str(), d.port), ("::1", 443));
    assert_eq!(d.to_string(), "anytls://pw@[::1]:443/");
    for bad in [
        "anytls://pw@::1:443",
        "anytls://pw@[::1",
        "anytls://pw@[::1]x",
        "anytls://pw@[nothex]:1",
    ] {
        assert!(AnytlsUri::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn uri_round_trips_and_errors() {
    let pin = [0x5au8; 32];
    let cases = [
        AnytlsUri {
            password: Some("pw".into()),
            host: "example.com".into(),
            port: 443,
            sni: Some("example.com".into()),
            insecure: true,
            ..AnytlsUri::default()
        },
        AnytlsUri {
            password: Some("a b/c?d#e@f".into()),
            host: "fe80::1".into(),
            port: 1,
            sni: Some("127.0.0.1".into()),
            pin: Some(pin),
            name: Some("home #1".into()),
            extra: vec![("x y".into(), "z&w".into())],
            ..AnytlsUri::default()
        },
        AnytlsUri {
            host: "10.0.0.1".into(),
            port: 65535,
            ..AnytlsUri::default()
        },
    ];
    for u in cases {
        let s = u.to_string();
        assert_eq!(AnytlsUri::parse(&s).unwrap(), u, "{s}");
    }
    for bad in [
        "http://pw@h:1",
        "anytls://",
        "anytls://pw@",
        "anytls://pw@:443",
        "anytls://pw@h:0",
        "anytls://pw@h:65536",
        "anytls://pw@h:x",
        "anytls://pw@h/path",
        "anytls://pw@h/?insecure=maybe",
        "anytls://pw@h/?pin=1234",
    ] {
        assert!(AnytlsUri::parse(bad).is_err(), "{bad}");
    }
    // Debug never shows the password.
    let u = AnytlsUri::parse("anytls://hunter2@h").unwrap();
    assert!(!format!("{u:?}").contains("hunter2"));
}

#[test]
fn uri_into_outbound() {
    let mut o = OutboundOptions::default();
    o.apply_uri(&AnytlsUri::parse("anytls://pw@[::1]:9443/?sni=localhost&insecure=1").unwrap());
    let c = o.to_client_setup().unwrap().config;
    assert_eq!(c.server, "[::1]:9443");
    assert_eq!(c.password, "pw");
    assert_eq!(c.sni.as_deref(), Some("localhost"));
    assert_eq!(c.verification, Verification::Insecure);
    // A pin wins over insecure.
    let pin = "ab".repeat(32);
    o.apply_uri(&AnytlsUri::parse(&format!("anytls://pw@h?insecure=1&pin={pin}")).unwrap());
    let c = o.to_client_setup().unwrap().config;
    assert_eq!(c.verification, Verification::Pin([0xab; 32]));
    assert_eq!(c.server, "h:443");
}

/// The sing-box outbound of ANYTLS.md 9.1 with every option.
const OUTBOUND: &str = r#"{
  "type": "anytls",
  "tag": "anytls-out",
  "server": "example.com",
  "server_port": 443,
  "password": "8JCsPssfgS8tiRwiMlhARg==",
  "idle_session_check_interval": "30s",
  "idle_session_timeout": "1m30s",
  "min_idle_session": 5,
  "client_metadata": "sing-box",
  "tls": {
    "enabled": true,
    "server_name": "cdn.example.com",
    "alpn": ["h2", "http/1.1"]
  },
  "ensure_idle_session": 2,
  "ensure_idle_session_create_rate": 1,
  "heartbeat": "15s",
  "heartbeat_timeout": "5s",
  "max_connection_lifetime": "1h",
  "connection_lifetime_jitter": "10m",
  "connect_timeout": "5s",
  "listen": "127.0.0.1",
  "listen_port": 1081
}"#;

#[test]
fn outbound_full() {
    let o = parse_client_json(OUTBOUND).unwrap();
    let s = o.to_client_setup().unwrap();
    let c = &s.config;
    assert_eq!(s.tag.as_deref(), Some("anytls-out"));
    assert_eq!(first_listen(&s), Some("127.0.0.1:1081".parse().unwrap()));
    assert_eq!(c.server, "example.com:443");
    assert_eq!(c.password, "8JCsPssfgS8tiRwiMlhARg==");
    assert_eq!(c.sni.as_deref(), Some("cdn.example.com"));
    assert_eq!(c.alpn, vec!["h2", "http/1.1"]);
    assert_eq!(c.verification, Verification::WebPki);
    assert_eq!(c.client_name, "sing-box");
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    let p = &c.pool;
    assert_eq!(p.check_interval, Duration::from_secs(30));
    assert_eq!(p.idle_timeout, Duration::from_secs(90));
    assert_eq!(p.min_idle, 5);
    assert_eq!(p.ensure_idle, 2);
    assert_eq!(p.ensure_create_rate, 1);
    assert_eq!(p.heartbeat, Some(Duration::from_secs(15)));
    assert_eq!(p.heartbeat_timeout, Some(Duration::from_secs(5)));
    assert_eq!(p.max_session_lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(p.lifetime_jitter, Duration::from_secs(600));
    // Never print the password.
    assert!(!format!("{o:?}").contains("8JCs"));
    assert!(!format!("{c:?}").contains("8JCs"));
}

#[test]
fn outbound_minimal_defaults() {
    let o = parse_client_json(
        r#"{"type":"anytls","server":"1.2.3.4","server_port":8443,"password":"pw",
            "tls":{"enabled":true,"insecure":true}}"#,
    )
    .unwrap();
    let s = o.to_client_setup().unwrap();
    assert_eq!(first_listen(&s), None);
    let c = s.config;
    assert_eq!(c.server, "1.2.3.4:8443");
    assert_eq!(c.sni, None);
    assert_eq!(c.verification, Verification::Insecure);
    assert_eq!(c.pool, crate::PoolConfig::default());
    // Zero means default for the idle durations and "off" for the optional ones.
    let o = parse_client_json(
        r#"{"server":"h","server_port":1,"password":"pw","idle_session_timeout":"0s",
            "heartbeat":"0s","max_connection_lifetime":"0"}"#,
    )
    .unwrap();
    let p = o.to_client_setup().unwrap().config.pool;
    assert_eq!(p.idle_timeout, Duration::from_secs(30));
    assert_eq!(p.heartbeat, None);
    assert_eq!(p.max_session_lifetime, None);
    // Only listen_port: the address defaults to 127.0.0.1.
    let o =
        parse_client_json(r#"{"server":"h","server_port":1,"password":"pw","listen_port":2080}"#)
            .unwrap();
    assert_eq!(
        first_listen(&o.to_client_setup().unwrap()),
        Some("127.0.0.1:2080".parse().unwrap())
    );
}

#[test]
fn outbound_tls_variants() {
    let base =
        |tls: &str| format!(r#"{{"server":"h","server_port":443,"password":"pw","tls":{tls}}}"#);
    let pin = "cd".repeat(32);
    let o = parse_client_json(&base(&format!(r#"{{"pin_sha256":"{pin}"}}"#))).unwrap();
    assert_eq!(
        o.to_client_setup().unwrap().config.verification,
        Verification::Pin([0xcd; 32])
    );
    let o = parse_client_json(&base(r#"{"certificate_path":"/etc/ca.pem","alpn":"h2"}"#)).unwrap();
    let c = o.to_client_setup().unwrap().config;
    assert_eq!(c.verification, Verification::CaFile("/etc/ca.pem".into()));
    assert_eq!(c.alpn, vec!["h2"]);

    // Inline certificate, as a list of lines: written to a file of roots.
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let (pem, _) = id.to_pem();
    let lines: Vec<&str> = pem.lines().collect();
    let o = parse_client_json(&base(&format!(
        r#"{{"certificate":{}}}"#,
        serde_json::to_string(&lines).unwrap()
    )))
    .unwrap();
    let Verification::CaPem(text) = o.to_client_setup().unwrap().config.verification else {
        panic!("inline certificate should stay in memory");
    };
    let back = crate::tls::pem_certs(&text).unwrap();
    assert_eq!(back, id.certs);
    // Nothing is written to the temporary directory (another local user
    // could have planted a file there).
    let digest: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(text.as_bytes()).into()
    };
    let old_name = format!("anytls-ca-{}.pem", &crate::tls::hex32(&digest)[..16]);
    assert!(
        !std::env::temp_dir().join(old_name).exists(),
        "the CA was written to the temporary directory"
    );
    // And as one string.
    let o = parse_client_json(&base(&format!(
        r#"{{"certificate":{}}}"#,
        serde_json::to_string(&pem).unwrap()
    )))
    .unwrap();
    assert!(matches!(
        o.to_client_setup().unwrap().config.verification,
        Verification::CaPem(_)
    ));

    for (tls, needle) in [
        (r#"{"enabled":false}"#.to_owned(), "tls.enabled"),
        (
            r#"{"insecure":true,"certificate_path":"/x"}"#.to_owned(),
            "choose one",
        ),
        (r#"{"pin_sha256":"00"}"#.to_owned(), "64 hex"),
        (r#"{"certificate":"not pem"}"#.to_owned(), "tls.certificate"),
    ] {
        let e = parse_client_json(&base(&tls))
            .unwrap()
            .to_client_setup()
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{tls}: {e}");
    }
}

#[test]
fn unknown_fields_are_named() {
    // Path, line and column, in the entry and in its objects.
    let e =
        parse_client_json(r#"{"server":"h","server_port":1,"password":"p","tcp_fast_opn":true}"#)
            .unwrap_err()
            .to_string();
    assert!(e.starts_with("config:1:"), "{e}");
    assert!(e.contains("unknown field `tcp_fast_opn`"), "{e}");
    let e = parse_client_json("{\"server\":\"h\",\n \"tls\":{\"enabled\":true,\n   \"utls_\":{}}}")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config:3:") && e.contains(": tls.utls_: unknown field `utls_`"),
        "{e}"
    );
    let e = parse_server_json(r#"{"listen_port":1,"sniffing":true}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `sniffing`"), "{e}");
    let e = parse_server_json(r#"{"users":[{"name":"a","password":"b","uuid":"c"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("users[0].uuid: unknown field `uuid`"), "{e}");
    // Inside a whole config: the entry's path is named too.
    let e = parse_client_json(
        r#"{"outbounds":[{"type":"direct"},{"type":"anytls","server":"h","tls":{"bogus":1}}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("outbounds[1].tls.bogus: unknown field `bogus`"),
        "{e}"
    );
}

#[test]
fn bad_values_are_named() {
    let e = parse_client_json(r#"{"heartbeat":"15"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid duration \"15\""), "{e}");
    let e = parse_client_json(r#"{"heartbeat":15}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid type"), "{e}");
    let e = parse_client_json(r#"{"server_port":70000}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("70000"), "{e}");
    let missing = |json: &str| {
        parse_client_json(json)
            .unwrap()
            .to_client_setup()
            .unwrap_err()
            .to_string()
    };
    assert!(missing(r#"{"server_port":1,"password":"p"}"#).contains("server"));
    assert!(missing(r#"{"server":"h","password":"p"}"#).contains("server_port"));
    assert!(missing(r#"{"server":"h","server_port":1}"#).contains("password"));
    assert!(
        missing(r#"{"type":"vmess","server":"h","server_port":1,"password":"p"}"#).contains("type")
    );
    let e = missing(r#"{"server":"h","server_port":1,"password":"p","heartbeat":"10ms"}"#);
    assert!(e.contains("heartbeat"), "{e}");
}

/// A whole sing-box client config: the anytls outbound and the socks inbound.
#[test]
fn whole_singbox_client_config() {
    let text = r#"{
      "log": {"level": "info"},
      "inbounds": [
        {"type": "tun", "tag": "tun-in"},
        {"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": 2080, "sniff": true}
      ],
      "outbounds": [
        {"type": "direct", "tag": "direct"},
        {"type": "anytls", "tag": "proxy", "server": "example.com", "server_port": 443,
         "password": "pw", "tls": {"enabled": true, "server_name": "example.com"}},
        {"type": "anytls", "tag": "second", "server": "other", "server_port": 1, "password": "x"}
      ],
      "route": {"final": "proxy"}
    }"#;
    let s = parse_client_json(text).unwrap().to_client_setup().unwrap();
    assert_eq!(s.tag.as_deref(), Some("proxy"));
    assert_eq!(s.config.server, "example.com:443");
    assert_eq!(first_listen(&s), Some("127.0.0.1:2080".parse().unwrap()));
    let e = parse_client_json(r#"{"outbounds":[{"type":"direct"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no entry of type \"anytls\""), "{e}");
    assert!(parse_client_json("[1]").is_err());
    assert!(parse_client_json("{").is_err());
}

/// The sing-box inbound of ANYTLS.md 9.1, padding scheme as list of lines.
const INBOUND: &str = r#"{
  "type": "anytls",
  "tag": "anytls-in",
  "listen": "127.0.0.1",
  "listen_port": 8443,
  "users": [
    {"name": "alice", "password": "pw-a"},
    {"name": "bob", "password": "pw-b"}
  ],
  "padding_scheme": [
    "stop=8",
    "0=30-30",
    "1=100-400",
    "2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000",
    "3=9-9,500-1000",
    "4=500-1000",
    "5=500-1000",
    "6=500-1000",
    "7=500-1000"
  ],
  "tls": {
    "enabled": true,
    "server_name": "example.com",
    "alpn": "h2"
  },
  "fallback": "127.0.0.1:80"
}"#;

#[test]
fn inbound_full() {
    let s = parse_server_json(INBOUND)
        .unwrap()
        .to_server_setup()
        .unwrap();
    assert_eq!(s.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(
        s.self_signed,
        Some(vec!["example.com".to_owned(), "127.0.0.1".to_owned()])
    );
    assert_eq!(s.server_name.as_deref(), Some("example.com"));
    let c = &s.config;
    assert_eq!(
        c.users,
        vec![
            ("alice".to_owned(), "pw-a".to_owned()),
            ("bob".to_owned(), "pw-b".to_owned())
        ]
    );
    // The lines join to the default scheme exactly (same MD5 as 6.3).
    assert_eq!(
        c.padding.raw().as_ref(),
        anytls_core::padding::DEFAULT_SCHEME.as_bytes()
    );
    assert_eq!(c.alpn, vec!["h2"]);
    assert_eq!(c.fallback, Some("127.0.0.1:80".parse().unwrap()));
    assert!(!format!("{:?}", parse_server_json(INBOUND).unwrap()).contains("pw-a"));
}

#[test]
fn inbound_certificates_and_errors() {
    let id = Identity::self_signed(&["example.com".into()]).unwrap();
    let (cert, key) = id.to_pem();
    let dir = std::env::temp_dir().join(format!("anytls-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), &cert).unwrap();
    std::fs::write(dir.join("k.pem"), &key).unwrap();
    let users = r#""users":[{"password":"pw"}]"#;
    let text = format!(
        r#"{{{users},"tls":{{"certificate_path":{:?},"key_path":{:?}}}}}"#,
        dir.join("c.pem"),
        dir.join("k.pem")
    );
    let s = parse_server_json(&text).unwrap().to_server_setup().unwrap();
    assert_eq!(s.self_signed, None);
    assert_eq!(s.config.tls.leaf_sha256(), id.leaf_sha256());
    assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
    // Inline, as lists of lines.
    let lines = |t: &str| serde_json::to_string(&t.lines().collect::<Vec<_>>()).unwrap();
    let text = format!(
        r#"{{{users},"tls":{{"certificate":{},"key":{}}}}}"#,
        lines(&cert),
        lines(&key)
    );
    let o = parse_server_json(&text).unwrap();
    // Debug never shows the private key.
    let key_line = key.lines().nth(1).unwrap();
    assert!(!format!("{o:?}").contains(key_line));
    let s = o.to_server_setup().unwrap();
    assert_eq!(s.config.tls.leaf_sha256(), id.leaf_sha256());
    let _ = std::fs::remove_dir_all(&dir);

    for (json, needle) in [
        (r#"{"listen_port":1}"#.to_owned(), "users"),
        (
            r#"{"users":[{"password":""}]}"#.to_owned(),
            "empty password",
        ),
        (format!(r#"{{{users},"listen":"localhost"}}"#), "listen"),
        (
            format!(r#"{{{users},"padding_scheme":["stop=x"]}}"#),
            "padding_scheme",
        ),
        (
            format!(r#"{{{users},"tls":{{"enabled":false}}}}"#),
            "tls.enabled",
        ),
        (
            format!(r#"{{{users},"tls":{{"key_path":"/k"}}}}"#),
            "go together",
        ),
        (format!(r#"{{{users},"type":"vless"}}"#), "type"),
    ] {
        let e = match parse_server_json(&json) {
            Ok(o) => o.to_server_setup().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{json}: {e}");
    }
}

#[test]
fn whole_singbox_server_config() {
    let text = r#"{
      "inbounds": [
        {"type": "vless", "tag": "x"},
        {"type": "anytls", "listen": "::", "listen_port": 443, "users": [{"name": "u", "password": "p"}],
         "padding_scheme": "stop=1\n0=10-20"}
      ],
      "outbounds": [{"type": "direct"}]
    }"#;
    let s = parse_server_json(text).unwrap().to_server_setup().unwrap();
    assert_eq!(s.listen, "[::]:443".parse().unwrap());
    assert_eq!(s.config.padding.raw().as_ref(), b"stop=1\n0=10-20");
    assert!(parse_server_json(r#"{"outbounds":[]}"#).is_err());
}

#[test]
fn generated_passwords_are_url_safe() {
    let a = generate_password().unwrap();
    let b = generate_password().unwrap();
    assert_eq!(a.len(), 24);
    assert_ne!(a, b);
    // No '-': a password must never look like a command-line option.
    for p in (0..200).map(|_| generate_password().unwrap()) {
        assert!(
            p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_'),
            "{p}"
        );
        assert_eq!(percent_encode(&p), p);
    }
}

#[test]
fn self_signed_names_cover_listen_ip() {
    let l: SocketAddr = "10.1.2.3:443".parse().unwrap();
    assert_eq!(self_signed_names(None, l), vec!["localhost", "10.1.2.3"]);
    let any: SocketAddr = "0.0.0.0:443".parse().unwrap();
    assert_eq!(
        self_signed_names(Some("example.com"), any),
        vec!["example.com"]
    );
}

#[test]
fn host_port_split() {
    assert_eq!(
        split_host_port("example.com:443"),
        Some(("example.com".into(), 443))
    );
    assert_eq!(split_host_port("[::1]:8443"), Some(("::1".into(), 8443)));
    assert_eq!(split_host_port("1.2.3.4:1"), Some(("1.2.3.4".into(), 1)));
    for bad in [
        "example.com",
        "::1:443",
        "[::1]",
        ":443",
        "h:0",
        "h:x",
        "[::1:443",
    ] {
        assert_eq!(split_host_port(bad), None, "{bad}");
    }
    assert_eq!(join_host_port("::1", 443), "[::1]:443");
    assert_eq!(join_host_port("h", 1), "h:1");
}

// ---------------------------------------------------------------------------
// The whole schema, comments, positions, mihomo

fn client_err(text: &str) -> String {
    match parse_client_json(text) {
        Ok(o) => o.to_client_setup().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

fn server_err(text: &str) -> String {
    match parse_server_json(text) {
        Ok(o) => o.to_server_setup().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn json_comments_and_trailing_commas_keep_positions() {
    let text = "// sing-box allows comments\n{\n  /* a block\n     over lines */ \"server\": \"h\", // the host\n  \"server_port\": 1, \"password\": \"a//b/*c*/\",\n  \"tls\": {\"alpn\": [\"h2\",],},\n}\n";
    let stripped = source::strip_json_comments(text);
    assert_eq!(stripped.len(), text.len());
    assert_eq!(stripped.lines().count(), text.lines().count());
    let s = parse_client_json(text).unwrap().to_client_setup().unwrap();
    // Comment markers inside strings are text.
    assert_eq!(s.config.password, "a//b/*c*/");
    assert_eq!(s.config.alpn, vec!["h2"]);
    // An error after comments points at the line and column as written.
    let text = "{\n  // comment\n  /* more */ \"server_port\": \"x\"\n}";
    let e = parse_client_json(text).unwrap_err().to_string();
    assert!(e.starts_with("config:3:"), "{e}");
    assert!(e.contains("server_port: invalid type"), "{e}");
    let ConfigError::Parse { line, column, .. } = parse_client_json(text).unwrap_err() else {
        panic!()
    };
    assert_eq!((line, column), (3, 31));
}

/// A whole sing-box client config with every TLS and dial field.
const FULL_CLIENT: &str = r#"{
  "log": {"level": "debug"},
  "dns": {"servers": [{"tag": "local", "type": "local"}]},
  "inbounds": [
    {"type": "tun", "tag": "tun-in", "address": ["172.19.0.1/30"]},
    {"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": 2080,
     "tcp_fast_open": true, "sniff": true, "set_system_proxy": false},
    {"type": "socks", "tag": "socks-in", "listen": "::1", "listen_port": 2081,
     "users": [{"username": "alice", "password": "alice-secret"}]},
    {"type": "http", "tag": "http-in", "listen_port": 2082, "tls": {"enabled": false}}
  ],
  "outbounds": [
    {"type": "direct", "tag": "direct"},
    {
      "type": "anytls", "tag": "proxy",
      "server": "example.com", "server_port": 443, "password": "pw-secret",
      "idle_session_check_interval": "30s", "idle_session_timeout": "30s", "min_idle_session": 5,
      "tls": {
        "enabled": true, "disable_sni": true, "server_name": "cdn.example.com",
        "insecure": false, "alpn": ["h2", "http/1.1"],
        "min_version": "1.2", "max_version": "1.3",
        "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
        "curve_preferences": ["X25519"],
        "certificate_public_key_sha256": [],
        "fragment": true, "fragment_fallback_delay": "500ms", "record_fragment": false,
        "ech": {"enabled": false, "config": [], "query_server_name": ""},
        "utls": {"enabled": true, "fingerprint": "firefox"},
        "reality": {"enabled": false, "public_key": "", "short_id": ""}
      },
      "detour": "",
      "bind_interface": "eth0",
      "inet4_bind_address": "192.0.2.1",
      "inet6_bind_address": "2001:db8::1",
      "bind_address_no_port": true,
      "routing_mark": "0x1234",
      "reuse_addr": true,
      "netns": "",
      "connect_timeout": "5s",
      "tcp_fast_open": true,
      "tcp_multi_path": true,
      "disable_tcp_keep_alive": false,
      "tcp_keep_alive": "5m",
      "tcp_keep_alive_interval": "75s",
      "udp_fragment": false,
      "domain_resolver": {"server": "local", "strategy": "prefer_ipv6"},
      "network_strategy": "default",
      "network_type": [],
      "fallback_network_type": [],
      "fallback_delay": "200ms",
      "domain_strategy": "ipv4_only"
    },
    {"type": "anytls", "tag": "backup", "server": "b.example.com", "server_port": 443, "password": "x"}
  ],
  "route": {"final": "proxy"}
}"#;

#[test]
fn full_singbox_client_schema() {
    let o = parse_client_json(FULL_CLIENT).unwrap();
    assert_eq!(o.outbound_path, "outbounds[1]");
    let s = o.to_client_setup().unwrap();
    let c = &s.config;
    assert_eq!(s.tag.as_deref(), Some("proxy"));
    assert_eq!(c.sni.as_deref(), Some("cdn.example.com"));
    assert!(c.tls_options.disable_sni);
    assert_eq!(c.tls_options.min_version, Some(TlsVersion::Tls12));
    assert_eq!(c.tls_options.max_version, Some(TlsVersion::Tls13));
    assert_eq!(c.tls_options.cipher_suites.len(), 2);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    let d = &c.dial;
    assert_eq!(d.bind_interface.as_deref(), Some("eth0"));
    assert_eq!(d.bind_address_v4, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(d.bind_address_v6, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(d.routing_mark, Some(0x1234));
    assert!(d.reuse_addr && d.tcp_fast_open && d.tcp_multi_path);
    // domain_resolver.strategy (the newer field) wins over domain_strategy.
    assert_eq!(d.domain_strategy, crate::DomainStrategy::PreferIpv6);
    assert_eq!(d.fallback_delay, Some(ms(200)));
    // Three listeners, in order, with their users.
    let l: Vec<(SocketAddr, Protocols, usize)> = s
        .listeners
        .iter()
        .map(|l| (l.addr, l.protocols, l.users.len()))
        .collect();
    assert_eq!(
        l,
        vec![
            ("127.0.0.1:2080".parse().unwrap(), Protocols::Mixed, 0),
            ("[::1]:2081".parse().unwrap(), Protocols::Socks, 1),
            ("127.0.0.1:2082".parse().unwrap(), Protocols::Http, 0),
        ]
    );
    assert_eq!(
        s.listeners[1].users[0],
        ProxyUser::new("alice", "alice-secret")
    );
    // The summary: what was taken, ignored and warned about.
    let notes: Vec<String> = s.notes.iter().map(ToString::to_string).collect();
    let has = |kind: NoteKind, needle: &str| {
        s.notes
            .iter()
            .any(|n| n.kind == kind && n.to_string().contains(needle))
    };
    assert!(
        has(NoteKind::Taken, "outbounds[1]: using anytls \"proxy\""),
        "{notes:#?}"
    );
    assert!(has(NoteKind::Taken, "1 more anytls entry"), "{notes:#?}");
    assert!(
        has(NoteKind::Ignored, "inbounds[0]: ignored: tun"),
        "{notes:#?}"
    );
    assert!(has(NoteKind::Ignored, "route"), "{notes:#?}");
    assert!(
        has(NoteKind::Warning, "outbounds[1].tls.utls: WARNING"),
        "{notes:#?}"
    );
    assert!(has(NoteKind::Warning, "\"firefox\""), "{notes:#?}");
    assert!(
        has(NoteKind::Warning, "tls.fragment: not applied"),
        "{notes:#?}"
    );
    assert!(
        has(NoteKind::Ignored, "tls.curve_preferences"),
        "{notes:#?}"
    );
    assert!(
        has(NoteKind::Ignored, "outbounds[1].domain_resolver"),
        "{notes:#?}"
    );
    assert!(has(NoteKind::Ignored, "bind_address_no_port"), "{notes:#?}");
    assert!(has(NoteKind::Ignored, "tcp_keep_alive"), "{notes:#?}");
    assert!(
        has(NoteKind::Ignored, "inbounds[1].tcp_fast_open"),
        "{notes:#?}"
    );
    assert!(has(NoteKind::Ignored, "inbounds[1].sniff"), "{notes:#?}");
    assert!(
        has(
            NoteKind::Taken,
            "inbounds[2]: socks listener on [::1]:2081 (1 user(s))"
        ),
        "{notes:#?}"
    );
    // Secrets stay out of Debug output and notes.
    let dbg = format!("{o:?} {s:?}");
    for secret in ["pw-secret", "alice-secret"] {
        assert!(!dbg.contains(secret), "{secret} in {dbg}");
        assert!(!notes.concat().contains(secret));
    }
    // --proxy NAME picks by tag.
    let o = parse_client_config(FULL_CLIENT, None, None, Some("backup")).unwrap();
    assert_eq!(o.outbound.server.as_deref(), Some("b.example.com"));
    let e = parse_client_config(FULL_CLIENT, None, None, Some("direct")).unwrap_err();
    assert!(
        e.to_string()
            .contains("outbounds[0] \"direct\" is of type \"direct\", not anytls"),
        "{e}"
    );
    let e = parse_client_config(FULL_CLIENT, None, None, Some("nope")).unwrap_err();
    assert!(e.to_string().contains("\"proxy\", \"backup\""), "{e}");
}

#[test]
fn refused_fields_name_path_and_position() {
    let out = |extra: &str| {
        format!(
            r#"{{"outbounds":[{{"type":"anytls","server":"h","server_port":1,"password":"p",{extra}}}]}}"#
        )
    };
    for (extra, needle) in [
        (
            r#""tls":{"ech":{"enabled":true}}"#,
            "outbounds[0].tls.ech: Encrypted Client Hello is not available in this build (rustls's client ECH needs an HPKE provider the ring crypto provider does not have); connecting without it would send the real server name in clear, so this config is refused. Remove tls.ech to connect without ECH.",
        ),
        (
            r#""tls":{"reality":{"enabled":true,"public_key":"k"}}"#,
            "outbounds[0].tls.reality: AnyTLS over REALITY is not supported",
        ),
        (
            r#""tls":{"certificate_public_key_sha256":["abc="]}"#,
            "outbounds[0].tls.certificate_public_key_sha256: public-key (SPKI) pins",
        ),
        (
            r#""tls":{"client_certificate_path":"/c.pem"}"#,
            "outbounds[0].tls.client_certificate_path: client certificates",
        ),
        (
            r#""tls":{"min_version":"1.0"}"#,
            "outbounds[0].tls.min_version: TLS options: TLS 1.0 is not supported",
        ),
        (
            r#""tls":{"max_version":"2"}"#,
            "outbounds[0].tls.max_version: TLS options: unknown TLS version",
        ),
        (
            r#""detour":"other""#,
            "outbounds[0].detour: detour is not supported",
        ),
        (r#""netns":"vpn""#, "outbounds[0].netns: network namespaces"),
        (
            r#""routing_mark":"0xzz""#,
            "outbounds[0].routing_mark: routing mark \"0xzz\"",
        ),
        (
            r#""domain_strategy":"ipv5_only""#,
            "outbounds[0].domain_strategy: unknown domain strategy",
        ),
        (
            r#""domain_resolver":{"strategy":"fast"}"#,
            "outbounds[0].domain_resolver.strategy: unknown domain strategy",
        ),
        (
            r#""inet4_bind_address":"::1""#,
            "outbounds[0].inet4_bind_address",
        ),
        (
            r#""tls":{"utls":{"enabled":true,"fingerprnt":"x"}}"#,
            "outbounds[0].tls.utls.fingerprnt: unknown field",
        ),
    ] {
        let e = client_err(&out(extra));
        assert!(e.starts_with("config:1:"), "{extra}: {e}");
        assert!(e.contains(needle), "{extra}: {e}");
    }
    // After parsing (no line): names the entry and the field.
    for (extra, needle) in [
        (
            r#""tls":{"cipher_suites":["TLS_FOO"]}"#,
            "outbounds[0].tls: TLS options: cipher suite \"TLS_FOO\"",
        ),
        (
            r#""tls":{"min_version":"1.3","max_version":"1.2"}"#,
            "outbounds[0].tls: ",
        ),
        (r#""tls":{"insecure":true,"pin_sha256":"00"}"#, "64 hex"),
    ] {
        let e = client_err(&out(extra));
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let inb = |extra: &str| {
        format!(
            "{{\"inbounds\":[{{\"type\":\"direct\"}},\n{{\"type\":\"anytls\",\"users\":[{{\"password\":\"p\"}}],{extra}}}]}}"
        )
    };
    for (extra, needle) in [
        (
            r#""tls":{"acme":{"domain":["example.com"],"dns01_challenge":{"provider":"x"}}}"#,
            "config:2:",
        ),
        (
            r#""tls":{"acme":{"domain":["example.com"],"dns01_challenge":{"provider":"x"}}}"#,
            "inbounds[1].tls.acme: the DNS-01 challenge is not supported",
        ),
        (
            r#""tls":{"acme":{"domain":["example.com"]},"certificate_path":"/c","key_path":"/k"}"#,
            "inbounds[1].tls.acme: give a certificate or ACME domains, not both",
        ),
        (
            r#""tls":{"acme":{"domain":["example.com"],"provider":"buypass"}}"#,
            "inbounds[1].tls.acme.provider: ACME configuration: provider \"buypass\"",
        ),
        (
            r#""tls":{"acme":{"domain":["*.example.com"]}}"#,
            "inbounds[1].tls.acme: ACME configuration: *.example.com: wildcard",
        ),
        (
            r#""tls":{"acme":{"domain":["example.com"],"provider":"zerossl"}}"#,
            "ZeroSSL needs external_account",
        ),
        (
            r#""tls":{"acme":{"domain":["example.com"],"disable_http_challenge":true,"disable_tls_alpn_challenge":true}}"#,
            "both challenges are disabled",
        ),
        (
            r#""tls":{"ech":{"enabled":true,"key_path":"/k"}}"#,
            "inbounds[1].tls.ech: Encrypted Client Hello",
        ),
        (
            r#""tls":{"reality":{"enabled":true,"handshake":{"server":"x","server_port":443}}}"#,
            "inbounds[1].tls.reality",
        ),
        (
            r#""tls":{"client_authentication":"require-and-verify"}"#,
            "inbounds[1].tls.client_authentication: verifying client certificates",
        ),
        (r#""detour":"other-in""#, "inbounds[1].detour: detour"),
        (r#""netns":"/run/netns/x""#, "inbounds[1].netns"),
        (
            r#""listen":"localhost""#,
            "inbounds[1].listen: \"localhost\" is not an IP address",
        ),
        (
            r#""tls":{"cipher_suites":"TLS_BAR"}"#,
            "inbounds[1].tls: TLS options",
        ),
    ] {
        let e = server_err(&inb(extra));
        assert!(e.contains(needle), "{extra}: {e}");
    }
    // Disabled or empty refused features are fine.
    let ok = inb(
        r#""tls":{"acme":{"domain":[]},"ech":{"enabled":false},"reality":{"enabled":false},"client_authentication":"no"}"#,
    );
    parse_server_json(&ok).unwrap().to_server_setup().unwrap();
    // A local listener without a port, and an HTTPS proxy listener.
    let e = client_err(
        r#"{"inbounds":[{"type":"mixed"}],"outbounds":[{"type":"anytls","server":"h","server_port":1,"password":"p"}]}"#,
    );
    assert!(e.contains("inbounds[0].listen_port: missing"), "{e}");
    let e = client_err(
        r#"{"inbounds":[{"type":"http","listen_port":1,"tls":{"enabled":true}}],"outbounds":[{"type":"anytls","server":"h","server_port":1,"password":"p"}]}"#,
    );
    assert!(e.contains("inbounds[0].tls: HTTPS proxy listeners"), "{e}");
}

#[test]
fn routing_marks_and_resolvers() {
    let mark = |v: &str| {
        let t = format!(r#"{{"server":"h","server_port":1,"password":"p","routing_mark":{v}}}"#);
        parse_client_json(&t)
            .unwrap()
            .to_client_setup()
            .unwrap()
            .config
            .dial
            .routing_mark
    };
    assert_eq!(mark("1234"), Some(1234));
    assert_eq!(mark("\"0x1234\""), Some(0x1234));
    assert_eq!(mark("\"4660\""), Some(4660));
    assert_eq!(mark("0"), None);
    let e =
        client_err(r#"{"server":"h","server_port":1,"password":"p","routing_mark":4294967296}"#);
    assert!(e.contains("routing_mark: routing mark 4294967296"), "{e}");
    let t = r#"{"server":"h","server_port":1,"password":"p","domain_resolver":"local"}"#;
    let s = parse_client_json(t).unwrap().to_client_setup().unwrap();
    assert_eq!(s.config.dial.domain_strategy, crate::DomainStrategy::AsIs);
    assert!(
        s.notes
            .iter()
            .any(|n| n.kind == NoteKind::Ignored && n.field == "domain_resolver")
    );
    assert!(s.config.dial.is_default());
}

#[test]
fn inbound_listen_fields() {
    let t = r#"{
      "type": "anytls", "listen": "127.0.0.1", "listen_port": 0,
      "tcp_fast_open": true, "udp_timeout": "2m", "sniff": true,
      "reuse_addr": true, "tcp_multi_path": true, "routing_mark": "0x10", "bind_interface": "lo",
      "users": [{"name": "u", "password": "p"}],
      "tls": {"min_version": "1.3", "kernel_tx": true}
    }"#;
    let s = parse_server_json(t).unwrap().to_server_setup().unwrap();
    assert_eq!(
        s.socket,
        ListenOptions {
            bind_interface: Some("lo".into()),
            routing_mark: Some(0x10),
            reuse_addr: true,
            tcp_multi_path: true,
        }
    );
    assert_eq!(s.config.udp.idle_timeout, Duration::from_secs(120));
    assert_eq!(s.config.tls_options.min_version, Some(TlsVersion::Tls13));
    let notes: Vec<String> = s.notes.iter().map(ToString::to_string).collect();
    for needle in [
        "tcp_fast_open: ignored",
        "sniff",
        "udp_timeout",
        "kernel_tx",
    ] {
        assert!(
            notes.iter().any(|n| n.contains(needle)),
            "{needle}: {notes:#?}"
        );
    }
}

#[test]
fn format_detection() {
    use std::path::Path;
    let fmt = |name: &str, text: &str| ConfigFormat::detect(Some(Path::new(name)), text);
    assert_eq!(fmt("a.json", "x").unwrap(), ConfigFormat::Json);
    assert_eq!(fmt("a.JSONC", "x").unwrap(), ConfigFormat::Json);
    assert_eq!(fmt("a.yml", "{").unwrap(), ConfigFormat::Yaml);
    assert_eq!(
        fmt("a.conf.d", "  \n{\"a\":1}").unwrap(),
        ConfigFormat::Json
    );
    assert_eq!(fmt("config", "proxies: []").unwrap(), ConfigFormat::Yaml);
    assert_eq!(
        fmt("config", "// sing-box\n{}").unwrap(),
        ConfigFormat::Json
    );
    assert_eq!(
        fmt("config", "\u{feff} /* x */ {}").unwrap(),
        ConfigFormat::Json
    );
    assert_eq!(
        fmt("config", "# mihomo\nproxies: []").unwrap(),
        ConfigFormat::Yaml
    );
    let e = fmt("c.toml", "").unwrap_err().to_string();
    assert!(e.contains(".toml files are not supported"), "{e}");
    // TOML without its extension, and YAML that is not a mihomo config.
    let e = parse_client_config(
        "[server]\naddr = \"h:1\"\n",
        Some(Path::new("conf")),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("conf: unrecognised format") || e.contains("not a mihomo config"),
        "{e}"
    );
    let e = parse_client_config("log-level: info\n", Some(Path::new("c.yaml")), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.yaml: not a mihomo config with proxies, nor a bare anytls entry"),
        "{e}"
    );
    let e = parse_server_config("proxies: []\n", Some(Path::new("s.yaml")), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a mihomo config with listeners"), "{e}");
    let e = parse_client_config("[1]", Some(Path::new("c.json")), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.json:1:1: invalid type: sequence, expected a JSON object"),
        "{e}"
    );
    let e = parse_server_config("- a\n- b\n", None, Some(ConfigFormat::Yaml), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config:1:1: invalid type: sequence, expected a YAML map"),
        "{e}"
    );
}

/// mihomo's anytls proxy as its docs/config.yaml shows it, in a config with
/// ports, authentication and listeners.
const MIHOMO_CLIENT: &str = r#"
port: 7890
socks-port: 7891
mixed-port: 10801
allow-lan: false
bind-address: "*"
authentication:
  - "username:password"
log-level: debug
proxies:
  - name: "ss1"
    type: ss
    server: server
    port: 443
    cipher: aes-128-gcm
    password: "password"
  - name: anytls
    type: anytls
    server: 1.2.3.4
    port: 443
    password: "<your password>"
    client-fingerprint: chrome
    udp: true
    idle-session-check-interval: 30
    idle-session-timeout: 30
    min-idle-session: 0
    sni: "example.com"
    alpn:
      - h2
      - http/1.1
    skip-cert-verify: true
    tfo: true
    ip-version: ipv4-prefer
    routing-mark: 6666
listeners:
  - name: mixed-in-1
    type: mixed
    port: 10810
    listen: 0.0.0.0
    users:
      - username: aaa
        password: bbb
  - name: tun-in-1
    type: tun
rules:
  - MATCH,anytls
"#;

#[test]
fn mihomo_client() {
    let o = parse_client_config(
        MIHOMO_CLIENT,
        Some(std::path::Path::new("c.yaml")),
        None,
        None,
    )
    .unwrap();
    let s = o.to_client_setup().unwrap();
    let c = &s.config;
    assert_eq!(s.tag.as_deref(), Some("anytls"));
    assert_eq!(c.server, "1.2.3.4:443");
    assert_eq!(c.password, "<your password>");
    assert_eq!(c.sni.as_deref(), Some("example.com"));
    assert_eq!(c.alpn, vec!["h2", "http/1.1"]);
    assert_eq!(c.verification, Verification::Insecure);
    assert_eq!(c.pool.check_interval, Duration::from_secs(30));
    assert!(c.dial.tcp_fast_open);
    assert_eq!(c.dial.routing_mark, Some(6666));
    assert_eq!(c.dial.domain_strategy, crate::DomainStrategy::PreferIpv4);
    let l: Vec<(String, Protocols, usize)> = s
        .listeners
        .iter()
        .map(|l| (l.addr.to_string(), l.protocols, l.users.len()))
        .collect();
    assert_eq!(
        l,
        vec![
            ("127.0.0.1:7890".into(), Protocols::Http, 1),
            ("127.0.0.1:7891".into(), Protocols::Socks, 1),
            ("127.0.0.1:10801".into(), Protocols::Mixed, 1),
            ("0.0.0.0:10810".into(), Protocols::Mixed, 1),
        ]
    );
    assert_eq!(
        s.listeners[0].users[0],
        ProxyUser::new("username", "password")
    );
    assert_eq!(s.listeners[3].users[0], ProxyUser::new("aaa", "bbb"));
    let notes: Vec<String> = s.notes.iter().map(ToString::to_string).collect();
    assert!(
        s.notes.iter().any(|n| n.kind == NoteKind::Warning
            && n.field == "c.yaml: proxies[1].client-fingerprint"
            && n.text.contains("\"chrome\"")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("listeners[1]: ignored: tun")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("c.yaml: proxies[1]: using anytls \"anytls\"")),
        "{notes:#?}"
    );
    assert!(!format!("{o:?}{s:?}").contains("your password"));

    // allow-lan opens the ports on bind-address.
    let lan = MIHOMO_CLIENT.replace("allow-lan: false", "allow-lan: true");
    let s = parse_client_config(&lan, None, Some(ConfigFormat::Yaml), None)
        .unwrap()
        .to_client_setup()
        .unwrap();
    assert_eq!(s.listeners[0].addr.to_string(), "0.0.0.0:7890");
    // A pin (colons allowed) wins over skip-cert-verify.
    let pin = "AB:".repeat(31) + "AB";
    let pinned = MIHOMO_CLIENT.replace(
        "skip-cert-verify: true",
        &format!("skip-cert-verify: true\n    fingerprint: \"{pin}\""),
    );
    let s = parse_client_config(&pinned, None, Some(ConfigFormat::Yaml), None)
        .unwrap()
        .to_client_setup()
        .unwrap();
    assert_eq!(s.config.verification, Verification::Pin([0xab; 32]));
    // --proxy NAME.
    let e = parse_client_config(MIHOMO_CLIENT, None, Some(ConfigFormat::Yaml), Some("ss1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("proxies[0] \"ss1\" is of type \"ss\", not anytls"),
        "{e}"
    );
    // Errors: file, line, column, path.
    let bad = MIHOMO_CLIENT.replace(
        "    tfo: true\n",
        "    tfo: true\n    reality-opts: {public-key: x}\n",
    );
    let e = parse_client_config(&bad, Some(std::path::Path::new("c.yaml")), None, None)
        .unwrap_err()
        .to_string();
    // serde_norway places errors raised by a value at its entry (line 17).
    assert!(e.starts_with("c.yaml:17:5: "), "{e}");
    assert!(
        e.contains("proxies[1].reality-opts: AnyTLS over REALITY"),
        "{e}"
    );
    for (from, to, needle) in [
        (
            "    tfo: true\n",
            "    tfo: true\n    sni-typo: x\n",
            "proxies[1].sni-typo: unknown field `sni-typo`",
        ),
        (
            "    tfo: true\n",
            "    tfo: true\n    ech-opts:\n      enable: true\n",
            "proxies[1].ech-opts: Encrypted Client Hello",
        ),
        (
            "    tfo: true\n",
            "    tfo: true\n    dialer-proxy: ss1\n",
            "proxies[1].dialer-proxy: dialer-proxy is not supported",
        ),
        (
            "    tfo: true\n",
            "    tfo: true\n    fingerprint: abc\n",
            "proxies[1].fingerprint: ",
        ),
        (
            "    port: 10810\n",
            "    port: 200,302\n",
            "listeners[0].port: port \"200,302\"",
        ),
        (
            "        password: bbb\n",
            "        password: bbb\n        uuid: x\n",
            "listeners[0].users[0].uuid: unknown field",
        ),
    ] {
        let text = MIHOMO_CLIENT.replace(from, to);
        let e = parse_client_config(&text, None, Some(ConfigFormat::Yaml), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config:"), "{e}");
        assert!(e.contains(needle), "{to}: {e}");
    }
    let e = parse_client_config(
        &MIHOMO_CLIENT.replace("ipv4-prefer", "ipv9"),
        None,
        Some(ConfigFormat::Yaml),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("proxies[1].ip-version: \"ipv9\""), "{e}");
    // A bare proxy entry.
    let bare = "name: a\ntype: anytls\nserver: h\nport: 8443\npassword: p\n";
    let s = parse_client_config(bare, None, Some(ConfigFormat::Yaml), None)
        .unwrap()
        .to_client_setup()
        .unwrap();
    assert_eq!(s.config.server, "h:8443");
    assert!(s.listeners.is_empty());
}

#[test]
fn mihomo_server() {
    let id = Identity::self_signed(&["example.com".into()]).unwrap();
    let (cert, key) = id.to_pem();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let text = format!(
        "listeners:\n  - name: anytls-in-1\n    type: anytls\n    port: 10818\n    listen: 127.0.0.1\n    users:\n      username1: password1\n      username2: password2\n    certificate: |\n{}    private-key: |\n{}    padding-scheme: |\n      stop=2\n      0=30-30\n      1=100-400\n",
        indent(&cert),
        indent(&key)
    );
    let o = parse_server_config(&text, Some(std::path::Path::new("s.yaml")), None, None).unwrap();
    assert_eq!(o.inbound_path, "listeners[0]");
    let s = o.to_server_setup().unwrap();
    assert_eq!(s.listen, "127.0.0.1:10818".parse().unwrap());
    assert_eq!(
        s.config.users,
        vec![
            ("username1".to_owned(), "password1".to_owned()),
            ("username2".to_owned(), "password2".to_owned())
        ]
    );
    assert_eq!(s.config.tls.leaf_sha256(), id.leaf_sha256());
    assert_eq!(s.self_signed, None);
    assert_eq!(
        s.config.padding.raw().as_ref(),
        b"stop=2\n0=30-30\n1=100-400"
    );
    assert!(!format!("{o:?}").contains("password1"));
    // Files by name; errors after parsing name the listener.
    let files = "listeners:\n- name: a\n  type: anytls\n  port: 1\n  users: {u: p}\n  certificate: /nonexistent/c.pem\n  private-key: /nonexistent/k.pem\n";
    let e = parse_server_config(files, Some(std::path::Path::new("s.yml")), None, None)
        .unwrap()
        .to_server_setup()
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/c.pem"), "{e}");
    for (text, needle) in [
        (
            "listeners:\n- {name: a, type: anytls, port: 1, users: {u: p}, ech-key: x}\n",
            "listeners[0].ech-key: Encrypted Client Hello",
        ),
        (
            "listeners:\n- {name: a, type: anytls, port: 1, users: {u: p}, proxy: b}\n",
            "listeners[0].proxy: proxy",
        ),
        (
            "listeners:\n- {name: a, type: anytls, port: 1, users: [u, p]}\n",
            "listeners[0].users: invalid type: sequence",
        ),
        (
            "listeners:\n- {name: a, type: mixed, port: 1}\n",
            "no entry of type \"anytls\" in listeners",
        ),
    ] {
        let e = parse_server_config(text, None, Some(ConfigFormat::Yaml), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
    // A bare listener: no certificate, so a self-signed one (noted).
    let bare = "name: a\ntype: anytls\nport: 0\nlisten: 127.0.0.1\nusers:\n  u: p\n";
    let s = parse_server_config(bare, None, Some(ConfigFormat::Yaml), None)
        .unwrap()
        .to_server_setup()
        .unwrap();
    assert!(s.self_signed.is_some());
    assert!(s.notes.iter().any(|n| n.text.contains("self-signed")));
}

#[test]
fn mihomo_ports_and_authentication() {
    let base = "proxies:\n- {name: p, type: anytls, server: h, port: 1, password: pw}\n";
    let parse = |extra: &str| {
        parse_client_config(
            &format!("{base}{extra}"),
            None,
            Some(ConfigFormat::Yaml),
            None,
        )
        .and_then(|o| o.to_client_setup())
    };
    // allow-lan with a specific bind-address; listeners with `users: []` opt out
    // of the global authentication.
    let s = parse(
        "allow-lan: true\nbind-address: 192.0.2.7\nsocks-port: \"7891\"\nauthentication: [\"a:b:c\"]\nlisteners:\n- {name: open, type: http, port: 8080, users: []}\n",
    )
    .unwrap();
    assert_eq!(s.listeners[0].addr.to_string(), "192.0.2.7:7891");
    assert_eq!(s.listeners[0].protocols, Protocols::Socks);
    // Split at the first colon: the password may hold colons.
    assert_eq!(s.listeners[0].users, vec![ProxyUser::new("a", "b:c")]);
    assert_eq!(s.listeners[1].addr.to_string(), "192.0.2.7:8080");
    assert!(s.listeners[1].users.is_empty());
    // mixed-port 0 is off, as in mihomo.
    assert!(parse("mixed-port: 0\n").unwrap().listeners.is_empty());
    let e = parse("mixed-port: 1\nauthentication: [\"nocolon\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("authentication[0]: expected \"user:password\""),
        "{e}"
    );
    assert!(!e.contains("nocolon"), "{e}");
    let e = parse("listeners:\n- {name: x, type: mixed, port: 1, certificate: c.pem}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners[0].certificate: TLS on local proxy listeners"),
        "{e}"
    );
}

#[test]
fn listen_options_bind() {
    // Multipath TCP where the kernel has it, plain TCP otherwise: a socket
    // either way, that accepts.
    for opts in [
        ListenOptions::default(),
        ListenOptions {
            reuse_addr: true,
            tcp_multi_path: true,
            ..ListenOptions::default()
        },
    ] {
        let l = opts.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        l.accept().unwrap();
    }
    assert!(ListenOptions::default().is_default());
    // A missing interface is an error that names it (Linux), or unsupported.
    let e = ListenOptions {
        bind_interface: Some("no-such-if0".into()),
        ..ListenOptions::default()
    }
    .bind("127.0.0.1:0".parse().unwrap())
    .unwrap_err();
    assert!(
        e.to_string().contains("no-such-if0") || e.to_string().contains("Linux only"),
        "{e}"
    );
}

#[test]
fn singbox_acme_fields_map_onto_the_manager() {
    let dir = std::env::temp_dir().join(format!("anytls-config-acme-{}", std::process::id()));
    let json = format!(
        r#"{{"type":"anytls","listen":"0.0.0.0","listen_port":443,"users":[{{"password":"p"}}],
        "tls":{{"enabled":true,"acme":{{"domain":["a.example.com","b.example.com"],
        "email":"ops@example.com","data_directory":{dir:?},"provider":"https://ca.example/dir",
        "alternative_http_port":8080,"alternative_tls_port":8443,"default_server_name":"a.example.com",
        "external_account":{{"key_id":"kid","mac_key":"c2VjcmV0"}},"directory_ca":"/etc/ca.pem"}}}}}}"#
    );
    let setup = parse_server_json(&json).unwrap().to_server_setup().unwrap();
    let crate::ServerTls::Acme(acme) = &setup.config.tls else {
        panic!("not ACME: {:?}", setup.config.tls)
    };
    let c = acme.config();
    assert_eq!(c.domains, ["a.example.com", "b.example.com"]);
    assert_eq!(c.email.as_deref(), Some("ops@example.com"));
    assert_eq!(c.data_directory, dir);
    assert_eq!(c.directory_url, "https://ca.example/dir");
    assert_eq!(
        c.directory_ca.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(c.http_addr, Some("0.0.0.0:8080".parse().unwrap()));
    assert!(c.tls_alpn_challenge);
    assert_eq!(
        c.alternative_tls_addr,
        Some("0.0.0.0:8443".parse().unwrap())
    );
    assert_eq!(c.external_account.as_ref().unwrap().key_id, "kid");
    // The first domain is the name clients use; no self-signed certificate.
    assert_eq!(setup.server_name.as_deref(), Some("a.example.com"));
    assert_eq!(setup.self_signed, None);
    let notes: Vec<String> = setup.notes.iter().map(|n| n.to_string()).collect();
    assert!(
        notes.iter().any(|n| n.contains("default_server_name")),
        "{notes:?}"
    );
    // The mac key stays out of Debug output.
    assert!(!format!("{:?}", setup.config).contains("c2VjcmV0"));

    // Defaults: Let's Encrypt, HTTP-01 on 80, a data directory chosen and
    // said; off port 443, a warning about TLS-ALPN-01.
    let json = r#"{"type":"anytls","listen_port":8443,"users":[{"password":"p"}],
        "tls":{"acme":{"domain":"example.com","disable_http_challenge":true}}}"#;
    let setup = parse_server_json(json).unwrap().to_server_setup().unwrap();
    let crate::ServerTls::Acme(acme) = &setup.config.tls else {
        panic!("not ACME")
    };
    assert_eq!(acme.config().directory_url, crate::acme::LETS_ENCRYPT);
    assert_eq!(acme.config().http_addr, None);
    let notes: Vec<String> = setup.notes.iter().map(|n| n.to_string()).collect();
    assert!(
        notes.iter().any(|n| n.contains("data_directory")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.contains("port 443")), "{notes:?}");
}
