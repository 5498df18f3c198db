//! The images `cargo xtask image` builds: valid OCI archives, reproducible, and programs that behave.
//! The first test to run builds the binaries (minutes on a cold target directory, seconds when warm).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use test_images::{ImageArchive, Profile};

fn images() -> &'static [ImageArchive] {
    static IMAGES: OnceLock<Vec<ImageArchive>> = OnceLock::new();
    IMAGES.get_or_init(|| test_images::build_images(Profile::Test).expect("building the images"))
}

fn image(name: &str) -> &'static ImageArchive {
    images()
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no image {name}"))
}

/// The files of an archive by path, with their tar headers' mtime, uid, gid and mode.
struct Tar {
    files: BTreeMap<String, (Vec<u8>, tar::Header)>,
    order: Vec<String>,
}

fn read_tar(bytes: &[u8]) -> Tar {
    let mut archive = tar::Archive::new(bytes);
    let mut files = BTreeMap::new();
    let mut order = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        order.push(path.clone());
        files.insert(path, (data, header));
    }
    Tar { files, order }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An archive opened along its OCI index: the index entry, the manifest, the config and the layers.
struct Opened {
    outer: Tar,
    index_entry: Value,
    config: Value,
    layers: Vec<Vec<u8>>,
}

fn blob<'a>(outer: &'a Tar, descriptor: &Value) -> &'a [u8] {
    let digest = descriptor["digest"].as_str().unwrap();
    let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let (data, _) = outer.files.get(&path).unwrap_or_else(|| panic!("no blob {path}"));
    assert_eq!(sha256(data), digest, "{path} does not hash to its name");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(data.len() as u64),
        "size of {path}"
    );
    data
}

fn open(image: &ImageArchive) -> Opened {
    let outer = read_tar(&std::fs::read(&image.path).unwrap());
    let json = |path: &str| -> Value { serde_json::from_slice(&outer.files[path].0).unwrap() };
    assert_eq!(
        json("oci-layout"),
        serde_json::json!({ "imageLayoutVersion": "1.0.0" })
    );
    let index = json("index.json");
    assert_eq!(index["schemaVersion"], 2);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let index_entry = entries[0].clone();
    assert_eq!(
        index_entry["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(index_entry["digest"], image.digest.as_str());
    let manifest: Value = serde_json::from_slice(blob(&outer, &index_entry)).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config: Value = serde_json::from_slice(blob(&outer, &manifest["config"])).unwrap();
    let layers: Vec<Vec<u8>> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar");
            blob(&outer, l).to_vec()
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    // docker load's view of the same archive.
    let docker = json("manifest.json");
    assert_eq!(docker[0]["RepoTags"], serde_json::json!([image.reference()]));
    assert_eq!(
        docker[0]["Config"],
        format!(
            "blobs/sha256/{}",
            manifest["config"]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        )
    );
    Opened {
        outer,
        index_entry,
        config,
        layers,
    }
}

/// Unpacks an image's layers into a fresh directory.
fn unpack(image: &ImageArchive) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for layer in open(image).layers {
        let mut archive = tar::Archive::new(layer.as_slice());
        archive.set_preserve_permissions(true);
        archive.unpack(dir.path()).unwrap();
    }
    dir
}

#[test]
fn every_archive_is_a_valid_oci_layout_that_containerd_names_right() {
    let names: Vec<String> = images().iter().map(ImageArchive::reference).collect();
    let tag = Profile::Test.tag();
    assert_eq!(
        names,
        [
            format!("dynatrace-operator:{tag}"),
            format!("pause:{tag}"),
            "fake-oneagent:1.276.0".to_owned(),
            "fake-oneagent:1.277.0".to_owned(),
            format!("sample-app:{tag}"),
        ]
    );
    for image in images() {
        let opened = open(image);
        assert_eq!(
            opened.index_entry["annotations"]["io.containerd.image.name"],
            image.containerd_name().as_str()
        );
        assert_eq!(opened.config["os"], "linux");
        assert_eq!(opened.config["architecture"], "amd64");
        assert_eq!(std::fs::metadata(&image.path).unwrap().len(), image.size);
        // Reproducible: fixed mtime, root-owned, no names of the build host, sorted.
        let layers: Vec<Tar> = opened.layers.iter().map(|l| read_tar(l)).collect();
        for tar in std::iter::once(&opened.outer).chain(&layers) {
            let mut sorted = tar.order.clone();
            sorted.sort();
            assert_eq!(tar.order, sorted, "{}: entries not sorted", image.reference());
            for (path, (_, header)) in &tar.files {
                assert_eq!(header.mtime().unwrap(), 0, "{path}");
                assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0), "{path}");
                assert_eq!(header.username().unwrap(), Some(""), "{path}");
                assert!(!path.starts_with('/') && !path.contains(".."), "{path}");
            }
        }
    }
}

#[test]
fn the_operator_image_is_one_static_binary_run_as_1001() {
    let image = image("dynatrace-operator");
    let opened = open(image);
    let config = &opened.config["config"];
    assert_eq!(config["User"], "1001:1001");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/dynatrace-operator"])
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        test_images::VERSION
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "dynatrace-operator"
    );
    assert!(image.tag != "latest");

    let layer = read_tar(&opened.layers[0]);
    let paths: Vec<&str> = layer.order.iter().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "etc/",
            "etc/group",
            "etc/passwd",
            "etc/ssl/",
            "etc/ssl/certs/",
            "etc/ssl/certs/ca-certificates.crt",
            "tmp/",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/dynatrace-operator",
        ]
    );
    assert!(!layer.files.keys().any(|p| p.starts_with("bin/")), "no shell");
    assert_eq!(layer.files["tmp/"].1.mode().unwrap(), 0o1777);
    let passwd = String::from_utf8(layer.files["etc/passwd"].0.clone()).unwrap();
    assert!(passwd.contains(":1001:1001:"), "{passwd}");

    let binary = &layer.files["usr/local/bin/dynatrace-operator"].0;
    assert_eq!(test_images::interpreter(binary).unwrap(), None, "must be static");
    let dir = unpack(image);
    let output = Command::new(dir.path().join("usr/local/bin/dynatrace-operator"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!("dynatrace-operator {}", test_images::VERSION)
    );
    // No path of the checkout or of Cargo's home in the binary: it does not depend on where it was built.
    let root = test_images::workspace_root();
    let root = root.to_string_lossy();
    assert!(!contains(binary, root.as_bytes()), "the binary names {root}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn two_builds_give_identical_archives() {
    let first = images();
    let again = tempfile::tempdir().unwrap();
    let second = test_images::build_images_into(Profile::Test, again.path()).unwrap();
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!((&a.name, &a.tag, &a.digest), (&b.name, &b.tag, &b.digest));
        assert_eq!(
            sha256(&std::fs::read(&a.path).unwrap()),
            sha256(&std::fs::read(&b.path).unwrap()),
            "{}",
            a.reference()
        );
    }
}

#[test]
fn pause_stops_on_sigterm_and_sigint() {
    let dir = unpack(image("pause"));
    for signal in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        let mut child = Command::new(dir.path().join("pause")).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "pause exited early");
        signal_child(&child, signal);
        let status = wait_for_exit(&mut child);
        assert!(status.success(), "{signal:?}: {status}");
    }
}

#[test]
fn pause_is_the_static_c_program_with_its_test_commands() {
    let image = image("pause");
    let config = &open(image).config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!([test_images::PAUSE_PATH]));
    assert_eq!(config["User"], "65535:65535");
    let dir = unpack(image);
    let pause = dir.path().join("pause");
    assert_eq!(
        test_images::interpreter(&std::fs::read(&pause).unwrap()).unwrap(),
        None,
        "must be static"
    );

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("greeting");
    let run = |args: &[&std::ffi::OsStr]| Command::new(&pause).args(args).output().unwrap();
    let written = run(&["write".as_ref(), file.as_os_str(), "hello".as_ref()]);
    assert!(written.status.success(), "{written:?}");
    let cat = run(&["cat".as_ref(), file.as_os_str()]);
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello\n");
    let missing = run(&["cat".as_ref(), work.path().join("none").as_os_str()]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let usage = run(&["nonsense".as_ref()]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    let unset = Command::new(&pause)
        .args(["connect", "PAUSE_TEST_UNSET", "80"])
        .env_remove("PAUSE_TEST_UNSET")
        .output()
        .unwrap();
    assert_eq!(unset.status.code(), Some(1), "{unset:?}");

    // serve-file prints the file, then pauses until stopped.
    let mut served = Command::new(&pause)
        .arg("serve-file")
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (line, _) = first_line(&mut served);
    assert_eq!(line, "hello\n");
    assert!(served.try_wait().unwrap().is_none(), "serve-file exited early");
    signal_child(&served, rustix::process::Signal::TERM);
    assert!(wait_for_exit(&mut served).success());
}

#[test]
fn the_pause_program_compiles_to_the_same_bytes_twice() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = test_images::pause_program(one.path()).unwrap();
    let second = test_images::pause_program(two.path()).unwrap();
    assert_eq!(
        sha256(&std::fs::read(&first).unwrap()),
        sha256(&std::fs::read(&second).unwrap())
    );
    // Cached: asking again compiles nothing and gives the same path.
    assert_eq!(test_images::pause_program(one.path()).unwrap(), first);
}

fn signal_child(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first line a child prints on stdout, and the rest of its stdout (after it exits).
fn first_line(child: &mut Child) -> (String, BufReader<std::process::ChildStdout>) {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (line, reader)
}

#[test]
fn the_fake_oneagent_reports_its_start_and_answers_the_health_check() {
    let image = image("fake-oneagent");
    let config = &open(image).config["config"];
    let version = config["Labels"]["com.dynatrace.build-version"].as_str().unwrap();
    assert!(version.starts_with(&format!("{}.", image.tag)), "{version}");
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "/usr/bin/watchdog-healthcheck64"])
    );
    assert!(
        config.get("User").is_none(),
        "runs as root like the real OneAgent"
    );

    let root = unpack(image);
    let state = tempfile::tempdir().unwrap();
    let report = state.path().join("report.json");
    let healthcheck = || {
        // As the DaemonSet's probe runs it: `/bin/sh -c /usr/bin/watchdog-healthcheck64`.
        Command::new(root.path().join("bin/sh"))
            .arg("-c")
            .arg(root.path().join("usr/bin/watchdog-healthcheck64"))
            .env("FAKE_ONEAGENT_REPORT", &report)
            .output()
            .unwrap()
    };
    assert_eq!(healthcheck().status.code(), Some(1), "unhealthy before the start");

    let mut agent = Command::new(root.path().join("usr/bin/fake-oneagent"))
        .args(["--set-tenant=abc", "--set-server={https://tenant/communication}"])
        .env("FAKE_ONEAGENT_REPORT", &report)
        .env("FAKE_ONEAGENT_VERSION", version)
        .env("DT_TENANT", "abc")
        .env("ONEAGENT_INSTALLER_SCRIPT_URL", "https://tenant/api")
        .env("https_proxy", "http://proxy:3128")
        .env("UNRELATED", "hidden")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (line, mut rest) = first_line(&mut agent);
    let json = line
        .strip_prefix("fake-oneagent started: ")
        .unwrap_or_else(|| panic!("{line}"));
    let reported: Value = serde_json::from_str(json).unwrap();
    assert_eq!(reported["version"], version);
    assert_eq!(reported["pid"], agent.id());
    assert_eq!(reported["uid"], rustix::process::getuid().as_raw());
    assert_eq!(
        reported["args"],
        serde_json::json!(["--set-tenant=abc", "--set-server={https://tenant/communication}"])
    );
    assert_eq!(
        reported["env"],
        serde_json::json!({
            "DT_TENANT": "abc",
            "ONEAGENT_INSTALLER_SCRIPT_URL": "https://tenant/api",
            "https_proxy": "http://proxy:3128",
        })
    );
    assert_eq!(reported["host_root"], false);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written, reported);

    let health = healthcheck();
    assert!(health.status.success(), "{health:?}");

    signal_child(&agent, rustix::process::Signal::TERM);
    assert!(wait_for_exit(&mut agent).success());
    let mut tail = String::new();
    rest.read_to_string(&mut tail).unwrap();
    assert_eq!(tail.trim(), "fake-oneagent stopping on SIGTERM");
    assert_eq!(healthcheck().status.code(), Some(1), "unhealthy after the stop");
}

#[test]
fn the_sample_app_is_dynamic_carries_its_libraries_and_sees_an_injected_one() {
    let image = image("sample-app");
    let root = unpack(image);
    let program = root.path().join("usr/local/bin/sample-app");
    let loader = test_images::interpreter(&std::fs::read(&program).unwrap()).unwrap();
    let loader = loader.expect("dynamically linked");
    assert!(
        root.path().join(loader.trim_start_matches('/')).is_file(),
        "{loader} in the image"
    );
    for library in test_images::shared_libraries(&program).unwrap() {
        let inside = root.path().join(library.strip_prefix("/").unwrap());
        assert!(inside.is_file(), "{} missing from the image", library.display());
    }

    // A library named like the OneAgent's, preloaded: a copy of the host's libm (harmless to load).
    let agent = tempfile::tempdir().unwrap();
    let injected = agent.path().join("oneagent/agent/lib64/liboneagentproc.so");
    std::fs::create_dir_all(injected.parent().unwrap()).unwrap();
    let libm = find_host_library("libm.so.6");
    std::fs::copy(libm, &injected).unwrap();

    for preload in [None, Some(&injected)] {
        let mut command = Command::new(&program);
        command.env("SAMPLE_APP_PORT", "0").stdout(Stdio::piped());
        if let Some(library) = preload {
            command.env("LD_PRELOAD", library);
        }
        let mut app = command.spawn().unwrap();
        let (line, _) = first_line(&mut app);
        let json = line
            .strip_prefix("sample-app started: ")
            .unwrap_or_else(|| panic!("{line}"));
        let reported: Value = serde_json::from_str(json).unwrap();
        let expected: Vec<String> = preload.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(
            reported["oneagent_libraries"],
            serde_json::json!(expected),
            "{line}"
        );
        signal_child(&app, rustix::process::Signal::TERM);
        assert!(wait_for_exit(&mut app).success());
    }

    // In its own root file system, with only the image's files, it starts too (needs root for chroot).
    if rustix::process::getuid().is_root() {
        let mut app = Command::new("chroot")
            .arg(root.path())
            .arg("/usr/local/bin/sample-app")
            .env("SAMPLE_APP_PORT", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (line, _) = first_line(&mut app);
        assert!(line.starts_with("sample-app started: "), "{line:?}");
        signal_child(&app, rustix::process::Signal::TERM);
        let _ = wait_for_exit(&mut app);
    } else {
        eprintln!("SKIPPED: starting the sample app in a chroot of its image needs root");
    }
}

fn find_host_library(name: &str) -> PathBuf {
    [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
    .unwrap_or_else(|| panic!("no {name} on this host"))
}
