//! The README's JSON examples are accepted by the program's config parsers,
//! and its first code block holds the two commands.

use anytls_tokio::Identity;
use anytls_tokio::config::{ConfigFormat, parse_client_config, parse_server_config};

const README: &str = include_str!("../../README.md");

/// Code blocks of a language, in order.
fn blocks(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in README.lines() {
        match &mut cur {
            None if line.trim() == format!("```{lang}") => cur = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => out.push(cur.take().unwrap_or_default()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    out
}

#[test]
fn first_block_is_demo_and_tests() {
    let first = &blocks("sh")[0];
    let cmds: Vec<&str> = first
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .collect();
    assert_eq!(
        cmds,
        [
            "cargo run --release -p anytls-tokio --bin anytls -- demo",
            "cargo test --workspace --locked"
        ]
    );
}

#[test]
fn readme_json_examples_parse() {
    let json = blocks("json");
    assert!(
        json.len() >= 3,
        "expected outbound, whole config and inbound examples"
    );
    let (mut clients, mut servers) = (0, 0);
    for text in &json {
        let is_server = text.contains("\"users\"");
        if is_server {
            let mut file = parse_server_config(text, None, Some(ConfigFormat::Json), None)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let opts = &mut file.inbound;
            // The example names certificate files; put real ones in their place.
            let id = Identity::self_signed(&["vpn.example.com".into()]).unwrap();
            let (cert, key) = id.to_pem();
            let dir = std::env::temp_dir().join(format!("anytls-readme-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let tls = opts.tls_mut();
            if tls.certificate_path.is_some() {
                std::fs::write(dir.join("c.pem"), cert).unwrap();
                std::fs::write(dir.join("k.pem"), key).unwrap();
                tls.certificate_path = Some(dir.join("c.pem"));
                tls.key_path = Some(dir.join("k.pem"));
            }
            let setup = file
                .to_server_setup()
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(setup.listen.port(), 8443);
            assert_eq!(
                setup.config.padding.raw().as_ref(),
                anytls_tokio::core::padding::DEFAULT_SCHEME.as_bytes()
            );
            assert_eq!(setup.config.tls.leaf_sha256(), id.leaf_sha256());
            let _ = std::fs::remove_dir_all(&dir);
            servers += 1;
        } else {
            let setup = parse_client_config(text, None, Some(ConfigFormat::Json), None)
                .and_then(|o| o.to_client_setup())
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(setup.config.server, "vpn.example.com:8443");
            assert_eq!(setup.config.sni.as_deref(), Some("vpn.example.com"));
            assert!(!setup.listeners.is_empty(), "{text}");
            clients += 1;
        }
    }
    assert!(
        clients >= 2 && servers >= 1,
        "{clients} client / {servers} server examples"
    );
}

#[test]
fn readme_yaml_examples_parse() {
    let yaml = blocks("yaml");
    assert_eq!(yaml.len(), 2, "expected a mihomo client and server");
    let client = parse_client_config(&yaml[0], None, Some(ConfigFormat::Yaml), None)
        .and_then(|o| o.to_client_setup())
        .unwrap_or_else(|e| panic!("{e}\n{}", yaml[0]));
    assert_eq!(client.config.server, "vpn.example.com:8443");
    assert_eq!(client.config.sni.as_deref(), Some("vpn.example.com"));
    assert_eq!(client.listeners[0].addr.to_string(), "127.0.0.1:7890");
    let mut server = parse_server_config(&yaml[1], None, Some(ConfigFormat::Yaml), None)
        .unwrap_or_else(|e| panic!("{e}\n{}", yaml[1]));
    // The example names certificate files; make the certificate here instead.
    let tls = server.inbound.tls_mut();
    assert!(tls.certificate_path.is_some() && tls.key_path.is_some());
    tls.certificate_path = None;
    tls.key_path = None;
    let setup = server.to_server_setup().unwrap();
    assert_eq!(setup.listen.port(), 8443);
    assert_eq!(setup.config.users[0].0, "alice");
}
