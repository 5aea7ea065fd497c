//! The image `scripts/image` builds without Docker is the Dockerfile's image: the same binaries
//! in the same place, the same link, user, ports and entrypoint, and a root filesystem that
//! runs them (the loader and the libraries they link, CA certificates, the nonroot user, no
//! shell). The Dockerfile is parsed, the archive is built from the debug binaries and read back.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the Dockerfile says about its final image.
#[derive(Debug, PartialEq)]
struct Shape {
    binaries: Vec<String>,
    links: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    user: String,
    ports: Vec<u64>,
}

fn dockerfile() -> Shape {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    // Continuation lines joined, comments dropped: one instruction per line.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let mut binaries = Vec::new();
    let mut links = BTreeMap::new();
    let mut entrypoint = Vec::new();
    let mut user = String::new();
    let mut ports = Vec::new();
    let mut dest = String::new();
    for line in joined.lines().map(str::trim) {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        match op {
            "RUN" => {
                for step in rest.split("&&").map(str::trim) {
                    let words: Vec<&str> = step.split_whitespace().collect();
                    match words.first() {
                        Some(&"cp") if words.last() == Some(&"/out/") => {
                            for w in &words[1..words.len() - 1] {
                                let name = w.rsplit('/').next().expect("a file name");
                                binaries.push(name.to_owned());
                            }
                        }
                        Some(&"ln") => {
                            // ln -s TARGET /out/NAME
                            let target = words[words.len() - 2];
                            let name = words[words.len() - 1].trim_start_matches("/out/");
                            links.insert(name.to_owned(), target.to_owned());
                        }
                        _ => {}
                    }
                }
            }
            "COPY" if rest.starts_with("--from=build /out/") => {
                dest = rest
                    .rsplit(' ')
                    .next()
                    .expect("COPY's destination")
                    .to_owned();
            }
            "USER" => user = rest.to_owned(),
            "EXPOSE" => {
                ports = rest
                    .split_whitespace()
                    .map(|p| p.parse().expect("EXPOSE takes port numbers"))
                    .collect()
            }
            "ENTRYPOINT" => entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT [..]"),
            _ => {}
        }
    }
    assert!(
        !dest.is_empty(),
        "the Dockerfile's final stage copies /out/ somewhere"
    );
    let links = links
        .into_iter()
        .map(|(name, target)| (format!("{dest}{name}"), target))
        .collect();
    Shape {
        binaries,
        links,
        entrypoint,
        user,
        ports,
    }
}

fn described() -> Shape {
    let out = Command::new(repo().join("scripts/image"))
        .arg("--describe")
        .output()
        .expect("run scripts/image --describe");
    assert!(out.status.success(), "scripts/image --describe failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("--describe prints JSON");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    Shape {
        binaries: strings(&v["binaries"]),
        links: v["links"]
            .as_object()
            .expect("links")
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().expect("a link target").to_owned()))
            .collect(),
        entrypoint: strings(&v["entrypoint"]),
        user: v["user"].as_str().expect("user").to_owned(),
        ports: v["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p.as_u64().expect("a port"))
            .collect(),
    }
}

#[test]
fn scripts_image_describes_the_dockerfiles_image() {
    assert_eq!(described(), dockerfile());
}

/// One file of the image's layer.
struct Entry {
    mode: u32,
    uid: u64,
    link: Option<String>,
    data: Vec<u8>,
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    std::fs::read(dir.join("blobs/sha256").join(hex)).expect("a blob of the layout")
}

#[test]
fn the_archive_is_the_dockerfiles_image() {
    let shape = dockerfile();
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(repo().join("scripts/image"))
        .args(["herald", "--debug", "--tag", "shape"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run scripts/image");
    assert!(
        run.status.success(),
        "scripts/image herald --debug:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The OCI layout, unpacked.
    let layout = out.path().join("layout");
    tar::Archive::new(
        std::fs::File::open(out.path().join("herald_shape.oci.tar")).expect("the archive"),
    )
    .unpack(&layout)
    .expect("unpack the archive");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let manifest: Value = serde_json::from_slice(&blob(
        &layout,
        index["manifests"][0]["digest"]
            .as_str()
            .expect("a manifest"),
    ))
    .expect("the manifest is JSON");
    let config: Value = serde_json::from_slice(&blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("a config"),
    ))
    .expect("the config is JSON");

    let c = &config["config"];
    assert_eq!(c["User"], shape.user.as_str());
    assert_eq!(c["Entrypoint"], serde_json::json!(shape.entrypoint));
    let mut exposed: Vec<String> = c["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .cloned()
        .collect();
    exposed.sort();
    let mut want: Vec<String> = shape.ports.iter().map(|p| format!("{p}/tcp")).collect();
    want.sort();
    assert_eq!(exposed, want);
    assert_eq!(config["os"], "linux");

    // The layer's files.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer");
    let gz = blob(&layout, layers[0]["digest"].as_str().expect("a layer"));
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    for e in layer.entries().expect("the layer is a tar") {
        let mut e = e.expect("a layer entry");
        let path = format!(
            "/{}",
            e.path()
                .expect("a path")
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
        );
        let header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("entry data");
        files.insert(
            path,
            Entry {
                mode: header.mode().expect("mode"),
                uid: header.uid().expect("uid"),
                link: e
                    .link_name()
                    .expect("link name")
                    .map(|l| l.to_string_lossy().into_owned()),
                data,
            },
        );
    }
    let bin = |name: &str| format!("/usr/local/bin/{name}");
    for b in &shape.binaries {
        let f = files
            .get(&bin(b))
            .unwrap_or_else(|| panic!("{} is missing", bin(b)));
        assert!(f.mode & 0o111 != 0, "{b} is executable");
        assert_eq!(f.uid, 0, "{b} belongs to root, not to the user it runs as");
        assert!(f.data.starts_with(b"\x7fELF"), "{b} is an ELF binary");
    }
    for (link, target) in &shape.links {
        let f = files
            .get(link)
            .unwrap_or_else(|| panic!("{link} is missing"));
        assert_eq!(f.link.as_deref(), Some(target.as_str()), "{link}");
    }
    // What the binaries need to run: the ELF loader they name, CA certificates (NATS and the
    // API over TLS), the nonroot user in /etc/passwd with its home, a writable /tmp.
    assert!(
        files.contains_key("/lib64/ld-linux-x86-64.so.2")
            || files.contains_key("/usr/lib64/ld-linux-x86-64.so.2")
            || files.keys().any(|k| k.contains("ld-linux")),
        "the dynamic loader"
    );
    assert!(
        files.keys().any(|k| k.contains("libc.so.6")),
        "glibc, as distroless/cc has it"
    );
    assert!(files.contains_key("/etc/ssl/certs/ca-certificates.crt"));
    let passwd = String::from_utf8_lossy(&files["/etc/passwd"].data).into_owned();
    let (uid, gid) = shape.user.split_once(':').expect("USER uid:gid");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("nonroot:x:{uid}:{gid}:"))),
        "nonroot {uid}:{gid} in /etc/passwd:\n{passwd}"
    );
    assert!(files.contains_key("/home/nonroot"));
    assert_eq!(
        files["/tmp"].mode & 0o7777,
        0o1777,
        "/tmp is sticky and writable"
    );
    // distroless has no shell, and neither has this image.
    for sh in ["/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash"] {
        assert!(!files.contains_key(sh), "{sh} is in the image");
    }
}
