//! Edge cases of real sing-box and mihomo configs (found by a review of the
//! config layer): each test asserts what such a config needs.
use super::*;

fn client_json(text: &str) -> Result<ClientSetup, ConfigError> {
    parse_client_config(text, None, Some(ConfigFormat::Json), None)?.to_client_setup()
}
fn server_json(text: &str) -> Result<ServerSetup, ConfigError> {
    parse_server_config(text, None, Some(ConfigFormat::Json), None)?.to_server_setup()
}
fn client_yaml(text: &str) -> Result<ClientSetup, ConfigError> {
    parse_client_config(text, None, Some(ConfigFormat::Yaml), None)?.to_client_setup()
}
fn server_yaml(text: &str) -> Result<ServerSetup, ConfigError> {
    parse_server_config(text, None, Some(ConfigFormat::Yaml), None)?.to_server_setup()
}

const OUT: &str = r#""type": "anytls", "tag": "p", "server": "example.com", "server_port": 443, "password": "pw""#;

// 1. sing-box's udp_timeout is UDPTimeoutCompat: an integer (seconds) or a
//    duration string.
#[test]
fn udp_timeout_integer_seconds() {
    let s = server_json(
        r#"{"type":"anytls","listen":"127.0.0.1","listen_port":8443,
        "users":[{"name":"a","password":"b"}],"udp_timeout":300}"#,
    );
    match s {
        Ok(s) => assert_eq!(s.config.udp.idle_timeout, Duration::from_secs(300)),
        Err(e) => panic!("udp_timeout: 300 refused: {e}"),
    }
    let c = client_json(&format!(
        r#"{{"inbounds":[{{"type":"mixed","listen":"127.0.0.1","listen_port":2080,"udp_timeout":60}}],
           "outbounds":[{{{OUT}}}]}}"#
    ));
    if let Err(e) = c {
        panic!("mixed udp_timeout: 60 refused: {e}");
    }
}

// 2. Durations: a long fraction of days overflows u128.
#[test]
fn duration_fraction_of_days_overflow() {
    let r = std::panic::catch_unwind(|| parse_go_duration("0.9999999999999999999999999d"));
    match r {
        Ok(v) => println!("0.9999999999999999999999999d -> {v:?}"),
        Err(_) => panic!("parse_go_duration panicked on \"0.9999999999999999999999999d\""),
    }
    // Through a config, too.
    let r = std::panic::catch_unwind(|| {
        client_json(&format!(
            r#"{{{OUT}, "heartbeat": "1.99999999999999999999999999d"}}"#
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    assert!(r.is_ok(), "config with heartbeat 1.999..d panicked");
}

// 3. mihomo `lan-allowed-ips` / `lan-disallowed-ips` restrict who may use the
//    ports when allow-lan is true. They are silently dropped: the listener is
//    open to every address, without a note.
#[test]
fn mihomo_lan_allowed_ips_dropped_silently() {
    // Address filters are not implemented: refused, never dropped.
    let text = "mixed-port: 7890\nallow-lan: true\nbind-address: '*'\nlan-allowed-ips:\n  - 192.168.0.0/16\nlan-disallowed-ips:\n  - 192.168.1.66/32\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    let e = client_yaml(text).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("lan-allowed-ips"), "{e}");
    // The default (everyone) and allow-lan: false are fine.
    let ok = "mixed-port: 7890\nallow-lan: true\nauthentication: ['u:p']\nlan-allowed-ips: ['0.0.0.0/0', '::/0']\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    client_yaml(ok).unwrap();
    let off = "mixed-port: 7890\nallow-lan: false\nlan-allowed-ips: ['10.0.0.0/8']\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    client_yaml(off).unwrap();
}

// 5. mihomo: `authentication:` left empty (null) is a normal template line;
//    refused here.
#[test]
fn mihomo_null_values() {
    let text = "mixed-port: 7890\nauthentication:\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    if let Err(e) = client_yaml(text) {
        panic!("authentication: (null) refused: {e}");
    }
}

// 7. mihomo `padding-scheme` from a CRLF file keeps '\r' at line ends.
#[test]
fn mihomo_padding_scheme_crlf() {
    let text = "listeners:\r\n  - name: in\r\n    type: anytls\r\n    port: 8443\r\n    listen: 127.0.0.1\r\n    users: {a: b}\r\n    padding-scheme: |\r\n      stop=8\r\n      0=30-30\r\n      1=100-400\r\n";
    match server_yaml(text) {
        Ok(s) => println!("CRLF padding scheme ok: {:?}", s.config.padding),
        Err(e) => panic!("CRLF padding-scheme refused: {e}"),
    }
}

// 9. The URI moves the server but keeps the config's pin / server_name.
#[test]
fn uri_keeps_config_pin_and_sni() {
    let pin = "ab".repeat(32);
    let mut o = parse_client_config(
        &format!(r#"{{{OUT}, "tls": {{"server_name": "old.example", "pin_sha256": "{pin}"}}}}"#),
        None,
        Some(ConfigFormat::Json),
        None,
    )
    .unwrap();
    o.outbound
        .apply_uri(&AnytlsUri::parse("anytls://pw@new.example:443").unwrap());
    let s = o.to_client_setup().unwrap();
    println!(
        "server {} sni {:?} verification {:?}",
        s.config.server, s.config.sni, s.config.verification
    );
}

// 10. JSON comment stripping edge cases.
#[test]
fn json_comment_edges() {
    // URL in a string, escaped quotes, /* in a string, CRLF, BOM.
    let text = "\u{feff}{\r\n  \"server\": \"example.com\", // c\r\n  \"server_port\": 443,\r\n  \"password\": \"a\\\"//b\\\\\", /* x\r\n y */\r\n  \"client_metadata\": \"https://x/*y*/\",\r\n}\r\n";
    let s = parse_client_config(text, None, None, None)
        .unwrap()
        .to_client_setup()
        .unwrap();
    assert_eq!(s.config.password, "a\"//b\\");
    assert_eq!(s.config.client_name, "https://x/*y*/");
    // Unterminated block comment: where is the error?
    let e = parse_client_config(
        "{\"server\": \"h\", /* oops\n\"server_port\": 1,\n\"password\": \"p\"}\n",
        None,
        Some(ConfigFormat::Json),
        None,
    )
    .unwrap_err();
    println!("unterminated /*: {e}");
    // A lone comma list is accepted as empty.
    let r = parse_client_config(
        &format!(r#"{{{OUT}, "tls": {{"alpn": [,]}}}}"#),
        None,
        Some(ConfigFormat::Json),
        None,
    );
    println!(
        "alpn [,]: {:?}",
        r.map(|o| o.outbound.tls.map(|t| t.alpn))
            .map_err(|e| e.to_string())
    );
    // Non-ASCII before the error: the column is in bytes.
    let e = parse_client_config(
        "{\"tag\": \"héllo wörld\", \"server_port\": \"x\"}",
        None,
        Some(ConfigFormat::Json),
        None,
    )
    .unwrap_err();
    println!("column after non-ASCII: {e}");
}

// 11. Trailing comma after a comment-only line in an object, and `//` at EOF
//     without newline.
#[test]
fn json_comment_at_eof() {
    let text = format!("{{{OUT},\n // last\n}} // end");
    client_json(&text).unwrap();
}

// 12. Error paths and line:column in whole configs.
#[test]
fn error_positions() {
    let text = format!(
        "{{\n\"outbounds\": [\n {{\"type\": \"direct\"}},\n {{{OUT},\n  \"tls\": {{\"min_version\": \"1.0\"}}}}\n]\n}}"
    );
    let e = client_json(&text).unwrap_err();
    println!("{e}");
    let ConfigError::Parse { line, path, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*line, 5);
    assert_eq!(path, "outbounds[1].tls.min_version");
    let text = "proxies:\n  - name: a\n    type: anytls\n    server: example.com\n    port: 443\n    password: pw\n    alpn: 5\n";
    let e = client_yaml(text).unwrap_err();
    println!("{e}");
}

// 13. Passwords in error messages: a wrong type next to a secret.
#[test]
fn secrets_in_errors() {
    let e = server_json(r#"{"type":"anytls","users":"hunter2-secret"}"#)
        .unwrap_err()
        .to_string();
    println!("users as string: {e}");
    let e = client_yaml("proxies:\n  - name: a\n    type: anytls\n    server: h\n    port: 1\n    password: [hunter2-secret]\n").unwrap_err().to_string();
    println!("password as list: {e}");
    let e = client_yaml("authentication: ['hunter2-secret']\nmixed-port: 1\nproxies:\n  - {name: a, type: anytls, server: h, port: 1, password: p}\n").unwrap_err().to_string();
    println!("authentication entry: {e}");
    assert!(!e.contains("hunter2"));
}

// 14. mihomo numbers as passwords / names.
#[test]
fn mihomo_numeric_passwords() {
    let s =
        client_yaml("proxies:\n  - {name: 1, type: anytls, server: h, port: 1, password: 12345}\n");
    println!(
        "numeric password: {:?}",
        s.as_ref()
            .map(|s| s.config.password.clone())
            .map_err(|e| e.to_string())
    );
    let s = server_yaml(
        "listeners:\n  - {name: in, type: anytls, port: 8443, listen: 127.0.0.1, users: {alice: 12345}}\n",
    );
    println!(
        "numeric user password: {:?}",
        s.as_ref()
            .map(|s| s.config.users.len())
            .map_err(|e| e.to_string())
    );
    s.unwrap();
}

// 15. mihomo listener ports: mihomo's listener `port` is a string field too;
//     and mihomo's client `port: 0` disables.
#[test]
fn mihomo_listener_port_string() {
    let s = server_yaml("listeners:\n  - {name: in, type: anytls, port: '8443', listen: 127.0.0.1, users: {a: b}}\n").unwrap();
    assert_eq!(s.listen.port(), 8443);
}

// 16. IPv6 listen with brackets / zones.
#[test]
fn listen_forms() {
    for l in ["::", "[::1]", "0.0.0.0", "fe80::1%eth0"] {
        let r = server_json(&format!(
            r#"{{"type":"anytls","listen":"{l}","listen_port":8443,"users":[{{"name":"a","password":"b"}}]}}"#
        ));
        println!(
            "listen {l:?}: {:?}",
            r.map(|s| s.listen).map_err(|e| e.to_string())
        );
    }
}

// 17. sing-box `users` entry without name.
#[test]
fn users_without_name_and_dupes() {
    let s = server_json(
        r#"{"type":"anytls","listen":"127.0.0.1","users":[{"password":"b"},{"name":"x","password":"b"}]}"#,
    );
    println!(
        "{:?}",
        s.map(|s| s.config.users.len()).map_err(|e| e.to_string())
    );
}

// 18. Fuzz: arbitrary text never panics; comment stripping keeps length and
//     line structure.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn tokens() -> impl Strategy<Value = String> {
        let tok = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("//".to_owned()),
            Just("/*".to_owned()),
            Just("*/".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\u{feff}".to_owned()),
            Just("é".to_owned()),
            Just("\"outbounds\"".to_owned()),
            Just("\"inbounds\"".to_owned()),
            Just("\"type\"".to_owned()),
            Just("\"anytls\"".to_owned()),
            Just("\"mixed\"".to_owned()),
            Just("\"tls\"".to_owned()),
            Just("\"server\"".to_owned()),
            Just("\"server_port\"".to_owned()),
            Just("\"password\"".to_owned()),
            Just("\"heartbeat\"".to_owned()),
            Just("\"1.5h\"".to_owned()),
            Just("443".to_owned()),
            Just("\"listen_port\"".to_owned()),
            Just("\"users\"".to_owned()),
            Just("\"udp_timeout\"".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("-1".to_owned()),
            Just("1e400".to_owned()),
            Just("proxies:".to_owned()),
            Just("listeners:".to_owned()),
            Just("  - ".to_owned()),
            Just("type: anytls".to_owned()),
            Just("port: ".to_owned()),
            Just("&a".to_owned()),
            Just("*a".to_owned()),
            Just("<<: *a".to_owned()),
            Just("!!binary".to_owned()),
            Just("? ".to_owned()),
            Just("---".to_owned()),
            "[ -~]{0,6}".prop_map(|s| s),
        ];
        proptest::collection::vec(tok, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("R3_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(4000), .. ProptestConfig::default() })]
        #[test]
        fn fuzz_parsers_never_panic(text in tokens()) {
            let stripped = source::strip_json_comments(&text);
            prop_assert_eq!(stripped.len(), text.len());
            prop_assert_eq!(stripped.matches('\n').count(), text.matches('\n').count());
            for fmt in [Some(ConfigFormat::Json), Some(ConfigFormat::Yaml), None] {
                if let Ok(o) = parse_client_config(&text, None, fmt, None) {
                    let _ = o.to_client_setup();
                }
                let _ = parse_server_config(&text, None, fmt, Some("x"));
            }
        }

        #[test]
        fn fuzz_duration_and_uri(s in "[0-9.a-zµ+-]{0,40}", u in "anytls://[ -~]{0,60}") {
            let _ = parse_go_duration(&s);
            let _ = AnytlsUri::parse(&u);
            let _ = split_host_port(&s);
        }

        #[test]
        fn fuzz_duration_digits(a in "[0-9]{0,30}", b in "[0-9]{0,40}", unit in "(ns|us|ms|s|m|h|d)") {
            let _ = parse_go_duration(&format!("{a}.{b}{unit}"));
        }
    }
}

// 20. A server config with two anytls inbounds: the note tells to use
//     --proxy, which `anytls server` does not have.
#[test]
fn server_note_mentions_missing_flag() {
    let text = r#"{"inbounds":[{"type":"anytls","tag":"a","listen":"127.0.0.1","users":[{"name":"u","password":"p"}]},
                   {"type":"anytls","tag":"b","listen":"127.0.0.1","users":[{"name":"u","password":"p"}]}]}"#;
    let o = parse_server_config(text, None, Some(ConfigFormat::Json), None).unwrap();
    for n in &o.notes {
        println!("note: {n}");
    }
    assert!(
        !o.notes.iter().any(|n| n.text.contains("--proxy")),
        "server note suggests --proxy, which anytls server lacks"
    );
}

// 21. mihomo ports not served are dropped silently (redir-port, tproxy-port).
#[test]
fn mihomo_other_ports_silent() {
    let text = "mixed-port: 7890\nredir-port: 7892\ntproxy-port: 7893\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    let s = client_yaml(text).unwrap();
    for n in &s.notes {
        println!("note: {n}");
    }
    assert!(
        s.notes.iter().any(|n| n.field.contains("redir-port")),
        "redir-port/tproxy-port dropped without a note"
    );
}

// 22. allow-lan false keeps every mihomo port on loopback (even with a
//     bind-address); allow-lan true with bind-address "::".
#[test]
fn mihomo_allow_lan_semantics() {
    let text = "port: 7891\nsocks-port: 7892\nmixed-port: 7890\nallow-lan: false\nbind-address: 192.168.1.2\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    let s = client_yaml(text).unwrap();
    assert!(
        s.listeners.iter().all(|l| l.addr.ip().is_loopback()),
        "{:?}",
        s.listeners
    );
    let text = "mixed-port: 7890\nallow-lan: true\nbind-address: '::'\nauthentication: ['u:p']\nproxies:\n  - {name: a, type: anytls, server: example.com, port: 443, password: pw}\n";
    let s = client_yaml(text).unwrap();
    println!(
        "bind-address '::' -> {:?}, users {}",
        s.listeners[0].addr,
        s.listeners[0].users.len()
    );
}

// 23. Empty strings are sing-box's "unset" (the documented structures show
//     "certificate": "", "certificate_path": "").
#[test]
fn empty_string_fields_as_unset() {
    let mut failed = Vec::new();
    for tls in [
        r#"{"enabled": true, "certificate": "", "certificate_path": ""}"#,
        r#"{"enabled": true, "insecure": true, "certificate_path": ""}"#,
        r#"{"enabled": true, "certificate": [], "pin_sha256": ""}"#,
        r#"{"enabled": true, "client_certificate_path": "", "client_key_path": "", "client_certificate": [], "client_key": []}"#,
    ] {
        match client_json(&format!(r#"{{{OUT}, "tls": {tls}}}"#)) {
            Ok(s) => println!("{tls}: {:?}", s.config.verification),
            Err(e) => {
                println!("{tls}: {e}");
                failed.push(tls);
            }
        }
    }
    for tls in [
        r#"{"enabled": true, "certificate": [], "certificate_path": "", "key": [], "key_path": ""}"#,
        r#"{"enabled": true, "server_name": "", "min_version": "", "client_authentication": ""}"#,
    ] {
        match server_json(&format!(
            r#"{{"type":"anytls","listen":"127.0.0.1","listen_port":0,"users":[{{"name":"a","password":"b"}}],"tls": {tls}}}"#
        )) {
            Ok(s) => println!("{tls}: self-signed {:?}", s.self_signed),
            Err(e) => {
                println!("{tls}: {e}");
                failed.push(tls);
            }
        }
    }
    assert!(failed.is_empty(), "refused: {failed:#?}");
}

// 24. Documented TLS values: min_version "1.0"/"1.1" (a floor rustls
//     already exceeds) and TLS 1.2 RSA-kx / CBC suites in a list.
#[test]
fn documented_tls_values() {
    for tls in [
        r#"{"min_version": "1.0"}"#,
        r#"{"min_version": "1.1", "max_version": "1.3"}"#,
        r#"{"cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]}"#,
    ] {
        let r = client_json(&format!(r#"{{{OUT}, "tls": {tls}}}"#));
        println!(
            "{tls}: {:?}",
            r.map(|s| s.config.tls_options).map_err(|e| e.to_string())
        );
    }
}

// 25. Secrets echoed by error messages: a URI's bad percent escape in the
//     password, mihomo `authentication` written as a string.
#[test]
fn secret_echo_in_uri_and_auth_errors() {
    let e = AnytlsUri::parse("anytls://hunter2%zzsecret@example.com")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2"), "a password is echoed: {e}");
    // One `authentication` string is taken as a list of one.
    let s = client_yaml("authentication: 'alice:hunter2-secret'\nmixed-port: 1\nproxies:\n  - {name: a, type: anytls, server: h, port: 1, password: p}\n").unwrap();
    assert_eq!(s.listeners[0].users.len(), 1);
}

// YAML merge keys (`<<: *anchor`), common in mihomo configs and applied by
// mihomo's YAML library.
#[test]
fn mihomo_merge_keys() {
    let text = "base: &base\n  type: anytls\n  port: 443\n  password: pw\n  skip-cert-verify: false\nproxies:\n  - <<: *base\n    name: a\n    server: example.com\n";
    let s = client_yaml(text).unwrap();
    assert_eq!(s.config.server, "example.com:443");
    // An error in a merged document still names the field.
    let bad = "base: &base\n  type: anytls\n  port: 443\n  password: pw\n  bogus-field: 1\nproxies:\n  - <<: *base\n    name: a\n    server: example.com\n";
    let e = client_yaml(bad).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("bogus-field"), "{e}");
}
