//! The device config's YAML (`src/config/yaml_in.rs`, `mailslot config compile`) and
//! its way back (`src/config/yaml_out.rs`, `mailslot config show`):
//!
//! - any text compiles to a config or an error with a message, never a panic: YAML
//!   anchors, aliases, tags and nesting, every key and its bound, durations, services,
//!   path regexes, inline PEM CAs and CA files;
//! - a config that compiles encodes to a `config.bin` that decodes back to it;
//! - `config show --show-secrets` of it compiles back to the same `config.bin`, byte for
//!   byte, as `yaml_out` promises; so does `show` of any `config.bin` that decodes
//!   (inputs that start with the `MSLC` magic are taken as one, their CRC-32 fixed up),
//!   except that `compile` may refuse a rule's path that is not a regex with a message
//!   saying so: the device build has no regex engine, so its decoder takes any bounded
//!   path (the edge refuses such a rule table at registration), while `compile` checks it.
//!
//! Files the YAML names (`token-file`, `edge-ca`, `ca-pool`) are read from a folder
//! holding a token, a PEM CA and a DER CA; an input naming any other file (a path with a
//! `/`, or a name starting with `.`) is skipped, so the fuzzer never opens `/dev` or a
//! FIFO.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailslot::config::codec::{self, CRC_INIT, CRC_LEN, HEADER_LEN, MAGIC};
use mailslot::config::pem::{der_to_pem, is_pem};
use mailslot::config::{compile_str, yaml_out, DeviceConfig};
use yaml_serde::Value;

/// A small DER SEQUENCE: all the compiler checks of a certificate is its outer shape.
const CA_DER: &[u8] = &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
const OTHER_DER: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x07];

/// The folder relative file names resolve against.
fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join("mailslot-fuzz-device-yaml");
        std::fs::create_dir_all(&dir).expect("temp folder");
        for (name, data) in [
            ("token", b"mst1.payload.signature\n".to_vec()),
            ("ca.pem", der_to_pem(CA_DER).into_bytes()),
            ("ca.der", CA_DER.to_vec()),
            ("other.der", OTHER_DER.to_vec()),
            ("empty", Vec::new()),
        ] {
            std::fs::write(dir.join(name), data).expect("fixture file");
        }
        dir
    })
}

/// True when every file the document names is a plain name inside [`base`].
fn names_only_fixtures(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map.iter().all(|(k, v)| {
            let file_key = matches!(
                k.as_str(),
                Some("token-file" | "edge-ca" | "ca-pool" | "caPool")
            );
            let safe = match v.as_str() {
                Some(s) if file_key && !is_pem(s) => !s.contains('/') && !s.starts_with('.'),
                _ => true,
            };
            safe && names_only_fixtures(k) && names_only_fixtures(v)
        }),
        Value::Sequence(seq) => seq.iter().all(names_only_fixtures),
        Value::Tagged(t) => names_only_fixtures(&t.value),
        _ => true,
    }
}

/// `show --show-secrets`, then `compile`: the same `config.bin`. `decoded`: the config
/// came from a `config.bin`, where a path that is not a regex may be (see the top).
fn show_then_compile(config: &DeviceConfig, decoded: bool) {
    let bytes = codec::encode(config).expect("a valid config encodes");
    let yaml = yaml_out::to_yaml(config, true);
    let back = match compile_str(&yaml, base()) {
        Ok(back) => back,
        Err(e) if decoded && is_path_regex_error(&e.to_string()) => return,
        Err(e) => panic!("`config show` output does not compile: {e}\n{yaml}"),
    };
    assert_eq!(*back, *config, "{yaml}");
    assert_eq!(codec::encode(&back).expect("encodes"), bytes, "{yaml}");
}

/// `compile`'s refusal of a rule's path that is not a regex:
/// `ingress[N].path: "..." is not a valid regex: ...`.
fn is_path_regex_error(message: &str) -> bool {
    message.starts_with("ingress[")
        && message
            .split_once("].path: ")
            .is_some_and(|(_, rest)| rest.contains(" is not a valid regex: "))
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(&MAGIC) && data.len() >= HEADER_LEN + CRC_LEN {
        let mut file = data.to_vec();
        let body = file.len() - CRC_LEN;
        let crc = codec::crc32(CRC_INIT, &file[..body]);
        file[body..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(config) = codec::decode(&file) {
            show_then_compile(&config, true);
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match yaml_serde::from_str::<Value>(text) {
        Ok(doc) if !names_only_fixtures(&doc) => return,
        _ => {}
    }
    if let Ok(config) = compile_str(text, base()) {
        let bytes = codec::encode(&config).expect("a compiled config encodes");
        assert_eq!(*codec::decode(&bytes).expect("and decodes"), *config);
        show_then_compile(&config, false);
    }
});
