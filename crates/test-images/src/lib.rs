//! The project's container images, built without a container daemon or a registry: Cargo builds the
//! binaries, this crate lays them into reproducible OCI image archives under `target/images/`, ready for
//! `ctr -n k8s.io images import` (and `docker load`).
//!
//! Images (tag `<version>` with [`Profile::Release`], `<version>-dev` with [`Profile::Test`]):
//! - `dynatrace-operator`: the static (musl) binary at `/usr/local/bin/dynatrace-operator`, user 1001, the
//!   host's CA bundle, `/etc/passwd`/`/etc/group` entries and `/tmp`; no shell.
//! - `pause`: the sandbox image for a node without a registry: [`PAUSE_SOURCE`] compiled static with the
//!   host's C compiler ([`pause_program`]); besides pausing it has a few test commands (see the source).
//! - `fake-oneagent:<a.b.c>`: behaves like a OneAgent for the DaemonSet (see the `test-image-programs`
//!   crate), one per [`FAKE_ONEAGENT_VERSIONS`], or any name and version with [`fake_oneagent_image`].
//! - `sample-app`: a dynamically linked program with the exact host libraries it loads.
//!
//! `cargo xtask image [--release]` builds them all; tests call [`build_images`].

mod elf;
pub mod oci;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, bail, ensure};
use sha2::{Digest as _, Sha256};

pub use elf::interpreter;
pub use oci::{ImageArchive, ImageConfig, Layer};

/// The target of the images' static binaries.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";
/// The target of the sample application, which must load libraries dynamically.
pub const DYNAMIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Repository of the operator image.
pub const OPERATOR_IMAGE: &str = "dynatrace-operator";
/// Repository of the sandbox image.
pub const PAUSE_IMAGE: &str = "pause";
/// The pause program's C source, relative to the workspace: the one pause of the project (the sandbox of
/// the real node and of [`PAUSE_IMAGE`]), with test commands `write`, `cat`, `serve-file` and `connect`.
pub const PAUSE_SOURCE: &str = "tools/images/pause.c";
/// Where the pause program lives in a pause image (also its entrypoint).
pub const PAUSE_PATH: &str = "/pause";
/// How [`pause_program`] compiles [`PAUSE_SOURCE`]: static (it runs on an empty base), small, stripped.
const PAUSE_CFLAGS: [&str; 3] = ["-static", "-Os", "-s"];
/// Repository of the fake OneAgent images built by [`build_images`].
pub const FAKE_ONEAGENT_IMAGE: &str = "fake-oneagent";
/// Repository of the sample application image.
pub const SAMPLE_APP_IMAGE: &str = "sample-app";
/// The OneAgent versions [`build_images`] builds fake OneAgent images for: the fake tenant's versions.
pub const FAKE_ONEAGENT_VERSIONS: [&str; 2] = ["1.276.0.20230901-120000", "1.277.0.20230914-094321"];
/// Where the fake OneAgent's binary lives in its image (also its entrypoint).
pub const FAKE_ONEAGENT_PATH: &str = "/usr/bin/fake-oneagent";
/// The health check of Dynatrace's OneAgent images, which the fake one answers.
pub const ONEAGENT_HEALTHCHECK: &str = "/usr/bin/watchdog-healthcheck64";
/// The host's CA bundle, copied into the operator image for HTTPS to the tenant.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The non-root user of the operator and sample app images.
pub const IMAGE_USER: u32 = 1001;

/// The workspace version: the operator's version, and the base of every tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How the binaries in the images are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    /// Cargo's dev profile, without debug info: quick to build for tests. Not a profile of its own: one
    /// would compile every build script and proc macro again for the host (223 against 163 CPU seconds
    /// cold); the flags that drop the debug info apply to the image's target only.
    Test,
    /// Cargo profile `release`: the shipped operator (fat LTO, size-optimized).
    Release,
}

impl Profile {
    /// The Cargo profile's name.
    pub fn cargo_profile(self) -> &'static str {
        match self {
            Profile::Test => "dev",
            Profile::Release => "release",
        }
    }

    /// The tag of the images of this profile: the version, with `-dev` for test builds. Never `latest`,
    /// which the kubelet would try to pull.
    pub fn tag(self) -> String {
        match self {
            Profile::Test => format!("{VERSION}-dev"),
            Profile::Release => VERSION.to_owned(),
        }
    }
}

/// The compiled programs that go into the images.
#[derive(Debug, Clone)]
struct Binaries {
    operator: PathBuf,
    fake_oneagent: PathBuf,
    sample_app: PathBuf,
}

/// Binaries already built in this process, per profile: tests ask for images many times, Cargo runs once.
static BUILT: Mutex<BTreeMap<Profile, Binaries>> = Mutex::new(BTreeMap::new());

/// Builds every image of `profile` into [`images_dir`] and returns the archives: the operator, pause,
/// a fake OneAgent per [`FAKE_ONEAGENT_VERSIONS`] and the sample app. Cargo runs once per process and
/// profile (and compiles only what changed); archives whose content did not change are not rewritten.
pub fn build_images(profile: Profile) -> anyhow::Result<Vec<ImageArchive>> {
    build_images_into(profile, &images_dir(profile))
}

/// [`build_images`] with the archives in `dir`.
pub fn build_images_into(profile: Profile, dir: &Path) -> anyhow::Result<Vec<ImageArchive>> {
    let binaries = binaries(profile)?;
    let mtime = source_date_epoch()?;
    let tag = profile.tag();
    let mut images = vec![
        operator_image(&binaries, &tag, mtime, dir)?,
        pause_image(&tag, mtime, dir)?,
    ];
    for version in FAKE_ONEAGENT_VERSIONS {
        images.push(oneagent_image(
            &binaries,
            FAKE_ONEAGENT_IMAGE,
            version,
            mtime,
            dir,
        )?);
    }
    images.push(sample_app_image(&binaries, &tag, mtime, dir)?);
    Ok(images)
}

/// A fake OneAgent image named `<repository>:<a.b.c>` for OneAgent `version` (`a.b.c.<build>`), tagged the
/// way the operator names tenant images (`<apiUrl host[:port]>/linux/oneagent:<a.b.c>`); its config
/// carries `com.dynatrace.build-version=<version>` and the process reports `version`.
pub fn fake_oneagent_image(
    profile: Profile,
    repository: &str,
    version: &str,
) -> anyhow::Result<ImageArchive> {
    let binaries = binaries(profile)?;
    oneagent_image(
        &binaries,
        repository,
        version,
        source_date_epoch()?,
        &images_dir(profile),
    )
}

/// The directory the archives of `profile` go to: `target/images/test/` or `target/images/release/` (the
/// fake OneAgent images have the same names in both).
pub fn images_dir(profile: Profile) -> PathBuf {
    let name = match profile {
        Profile::Test => "test",
        Profile::Release => "release",
    };
    target_dir().join("images").join(name)
}

/// The checkout: two levels above this crate.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory of the checkout (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || workspace_root().join("target"),
            |dir| workspace_root().join(dir),
        )
}

/// Modification time of every file in the images: `SOURCE_DATE_EPOCH`, or 0.
fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} must be seconds since 1970")),
        Err(_) => Ok(0),
    }
}

fn created() -> anyhow::Result<Option<String>> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        return Ok(None);
    }
    Ok(Some(rfc3339(source_date_epoch()?)))
}

/// `seconds` since 1970 as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rem = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn binaries(profile: Profile) -> anyhow::Result<Binaries> {
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(binaries) = built.get(&profile) {
        return Ok(binaries.clone());
    }
    let mut statics = cargo_build(
        profile,
        STATIC_TARGET,
        &[
            "-p",
            "dynatrace-operator",
            "-p",
            "test-image-programs",
            "--bin",
            "dynatrace-operator",
            "--bin",
            "fake-oneagent",
        ],
    )?;
    let mut dynamic = cargo_build(
        profile,
        DYNAMIC_TARGET,
        &["-p", "test-image-programs", "--bin", "sample-app"],
    )?;
    let take = |map: &mut BTreeMap<String, PathBuf>, name: &str| {
        map.remove(name)
            .with_context(|| format!("cargo build reported no executable {name}"))
    };
    let binaries = Binaries {
        operator: take(&mut statics, "dynatrace-operator")?,
        fake_oneagent: take(&mut statics, "fake-oneagent")?,
        sample_app: take(&mut dynamic, "sample-app")?,
    };
    built.insert(profile, binaries.clone());
    Ok(binaries)
}

/// Runs `cargo build` for `target` and returns the executables it produced by name. Paths of the checkout
/// and of Cargo's home are mapped to fixed ones, so the binaries do not depend on where they were built.
fn cargo_build(
    profile: Profile,
    target: &str,
    selection: &[&str],
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut rustflags = vec![format!("--remap-path-prefix={}=/build", root.display())];
    if let Some(home) = cargo_home {
        rustflags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    if profile == Profile::Test {
        // The operator binary shrinks from 100 to 73 MB; the symbols stay for backtraces (without them:
        // 49 MB).
        rustflags.extend(["-Cdebuginfo=0".to_owned(), "-Cstrip=debuginfo".to_owned()]);
    }
    let mut command = Command::new(&cargo);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
    command
        .current_dir(&root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(["--profile", profile.cargo_profile(), "--target", target])
        .args(selection)
        // Only the target's artifacts get these flags, so host builds are not invalidated.
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
        // What Cargo sets for a running test or `cargo run` must not leak into the build: build scripts
        // that watch these (ring watches CARGO_MANIFEST_DIR) would rebuild on every change of caller.
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CARGO_MANIFEST_PATH")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .env_remove("CARGO_TARGET_TMPDIR")
        .env_remove("OUT_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let shown = format!(
        "cargo build --profile {} --target {target} {}",
        profile.cargo_profile(),
        selection.join(" ")
    );
    eprintln!("==> {shown}");
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {shown} (is cargo on PATH?)"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut executables = BTreeMap::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of {shown}"))?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(path)) = (message["target"]["name"].as_str(), message["executable"].as_str())
        {
            executables.insert(name.to_owned(), PathBuf::from(path));
        }
    }
    let status = child.wait().with_context(|| format!("waiting for {shown}"))?;
    if !status.success() {
        let hint = if target == STATIC_TARGET {
            format!(" (missing target? run `rustup target add {STATIC_TARGET}`)")
        } else {
            String::new()
        };
        bail!("{shown} failed with {status}{hint}");
    }
    Ok(executables)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a binary that must be static (it runs on an empty base).
fn read_static(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read(path)?;
    if let Some(loader) = interpreter(&bytes).with_context(|| format!("reading {}", path.display()))? {
        bail!(
            "{} is dynamically linked (loader {loader}); the images need static binaries ({STATIC_TARGET} or `cc -static`)",
            path.display()
        );
    }
    Ok(bytes)
}

fn archive_path(dir: &Path, name: &str, tag: &str) -> PathBuf {
    dir.join(format!("{}_{tag}.tar", name.replace(['/', ':'], "_")))
}

fn oci_labels(title: &str, version: &str, description: &str) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", title),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.description", description),
        ("org.opencontainers.image.licenses", env!("CARGO_PKG_LICENSE")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn operator_image(binaries: &Binaries, tag: &str, mtime: u64, dir: &Path) -> anyhow::Result<ImageArchive> {
    let ca = std::fs::read(CA_BUNDLE).with_context(|| {
        format!("reading {CA_BUNDLE} for the operator image (install the ca-certificates package)")
    })?;
    let user = IMAGE_USER;
    let mut layer = Layer::new();
    layer
        .file(
            "/usr/local/bin/dynatrace-operator",
            0o755,
            read_static(&binaries.operator)?,
        )?
        .file(CA_BUNDLE, 0o644, ca)?
        .file(
            "/etc/passwd",
            0o644,
            format!("root:x:0:0:root:/root:/sbin/nologin\ndynatrace-operator:x:{user}:{user}::/tmp:/sbin/nologin\n")
                .into_bytes(),
        )?
        .file(
            "/etc/group",
            0o644,
            format!("root:x:0:\ndynatrace-operator:x:{user}:\n").into_bytes(),
        )?
        .dir("/tmp", 0o1777)?;
    let config = ImageConfig {
        name: OPERATOR_IMAGE.to_owned(),
        tag: tag.to_owned(),
        user: Some(format!("{user}:{user}")),
        entrypoint: vec!["/usr/local/bin/dynatrace-operator".to_owned()],
        env: vec![
            "PATH=/usr/local/bin".to_owned(),
            format!("SSL_CERT_FILE={CA_BUNDLE}"),
        ],
        labels: oci_labels(
            OPERATOR_IMAGE,
            VERSION,
            "Dynatrace Operator (Rust): operator, webhook server and CSI driver in one binary",
        ),
        healthcheck: None,
        created: created()?,
    };
    let layers = [layer.to_tar(mtime)?];
    oci::write_archive(&config, &layers, mtime, &archive_path(dir, &config.name, tag))
}

fn pause_image(tag: &str, mtime: u64, dir: &Path) -> anyhow::Result<ImageArchive> {
    let program = pause_program(&target_dir().join("images"))?;
    // As Kubernetes' own pause image: nobody.
    let config = pause_image_config(PAUSE_IMAGE, tag, Some("65535:65535"))?;
    write_pause_image(&config, &program, mtime, &archive_path(dir, &config.name, tag))
}

/// The config of a pause image `name:tag` running as `user` (root when `None`).
pub fn pause_image_config(name: &str, tag: &str, user: Option<&str>) -> anyhow::Result<ImageConfig> {
    Ok(ImageConfig {
        name: name.to_owned(),
        tag: tag.to_owned(),
        user: user.map(str::to_owned),
        entrypoint: vec![PAUSE_PATH.to_owned()],
        labels: oci_labels(name, VERSION, "Pod sandbox for a node without a registry"),
        created: created()?,
        ..ImageConfig::default()
    })
}

/// Writes the pause image of `config` holding `program` (from [`pause_program`]) at [`PAUSE_PATH`] as an
/// OCI archive at `path` (kept when it already holds this very image).
pub fn write_pause_image(
    config: &ImageConfig,
    program: &Path,
    mtime: u64,
    path: &Path,
) -> anyhow::Result<ImageArchive> {
    let mut layer = Layer::new();
    layer.file(PAUSE_PATH, 0o755, read_static(program)?)?;
    let layers = [layer.to_tar(mtime)?];
    oci::write_archive(config, &layers, mtime, path)
}

/// Compiles [`PAUSE_SOURCE`] with `cc -static -Os -s` into `<cache>/pause-<hash>/pause`, where the hash
/// covers the source and the flags, unless it is there already; returns its path. The binary does not
/// depend on where the checkout is (stripped, paths mapped), so two builds give the same bytes.
pub fn pause_program(cache: &Path) -> anyhow::Result<PathBuf> {
    compile_c(
        cache,
        PAUSE_SOURCE,
        &PAUSE_CFLAGS,
        "pause",
        "a static libc is needed (`apt-get install libc6-dev`)",
    )
}

/// Compiles the C file `source` (relative to the workspace) with `flags` into `<cache>/<name>-<hash>/<name>`,
/// the hash covering the source and the flags, unless it is there already; returns its path. The output
/// does not depend on where the checkout is (paths mapped), and it is written under a name of its own and
/// renamed, so concurrent builders never see half a file.
fn compile_c(cache: &Path, source: &str, flags: &[&str], name: &str, hint: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let source = root.join(source);
    let code = read(&source)?;
    let mut hasher = Sha256::new();
    hasher.update(&code);
    hasher.update(flags.join(" "));
    let hash = hex::encode(&hasher.finalize()[..8]);
    let stem = name.split('.').next().unwrap_or(name);
    let dir = cache.join(format!("{stem}-{hash}"));
    let output_path = dir.join(name);
    if output_path.is_file() {
        return Ok(output_path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Unique per process and call: threads of one test binary build concurrently.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!("{name}.{}.{call}.tmp", std::process::id()));
    let output = Command::new("cc")
        .args(flags)
        .arg(format!("-ffile-prefix-map={}=/build", root.display()))
        .arg("-o")
        .arg(&partial)
        .arg(&source)
        .output()
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot run `cc` to compile {} ({err}); install a C compiler and a static libc \
                 (`apt-get install gcc libc6-dev`)",
                source.display()
            )
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "`cc {}` of {} failed: {}; {hint}",
            flags.join(" "),
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::rename(&partial, &output_path).with_context(|| format!("writing {}", output_path.display()))?;
    Ok(output_path)
}

/// The stand-in agent library's C source, relative to the workspace (see the source for what it does).
pub const AGENT_LIBRARY_SOURCE: &str = "tools/images/liboneagentproc.c";
/// How [`agent_library`] compiles [`AGENT_LIBRARY_SOURCE`].
const AGENT_LIBRARY_CFLAGS: [&str; 4] = ["-shared", "-fPIC", "-Os", "-s"];

/// Compiles [`AGENT_LIBRARY_SOURCE`] into `<cache>/liboneagentproc-<hash>/liboneagentproc.so` (the hash covers
/// the source and the flags) unless it is there already; returns its path. The fake tenant serves it as
/// `agent/lib64/liboneagentproc.so` (`--agent-library`); a process that loads it appends a line to
/// `$DT_AGENT_EVIDENCE` (default `/tmp/oneagent-loaded`) and has it in its `/proc/self/maps`.
pub fn agent_library(cache: &Path) -> anyhow::Result<PathBuf> {
    compile_c(
        cache,
        AGENT_LIBRARY_SOURCE,
        &AGENT_LIBRARY_CFLAGS,
        "liboneagentproc.so",
        "a C compiler and libc headers are needed (`apt-get install gcc libc6-dev`)",
    )
}

/// The tag the operator gives a OneAgent version (the operator's own rule,
/// [`pure_desired::version::image_tag`]), for a version that has the three numeric parts the tag needs.
fn oneagent_tag(version: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = version.split('.').take(3).collect();
    ensure!(
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "OneAgent version {version:?} must look like 1.277.0.20230914-094321"
    );
    Ok(pure_desired::version::image_tag(Some(version)))
}

fn oneagent_image(
    binaries: &Binaries,
    repository: &str,
    version: &str,
    mtime: u64,
    dir: &Path,
) -> anyhow::Result<ImageArchive> {
    let tag = oneagent_tag(version)?;
    let mut layer = Layer::new();
    layer
        .file(FAKE_ONEAGENT_PATH, 0o755, read_static(&binaries.fake_oneagent)?)?
        // The same binary answers as the health check and as `sh -c` (the probes run `/bin/sh -c <check>`).
        // Relative links, so an unpacked copy works outside a container too.
        .symlink(ONEAGENT_HEALTHCHECK, "fake-oneagent")?
        .symlink("/bin/sh", "../usr/bin/fake-oneagent")?
        .dir("/tmp", 0o1777)?;
    let mut labels = oci_labels(FAKE_ONEAGENT_IMAGE, version, "Fake Dynatrace OneAgent for tests");
    labels.insert("com.dynatrace.build-version".to_owned(), version.to_owned());
    let config = ImageConfig {
        name: repository.to_owned(),
        tag: tag.clone(),
        user: None,
        entrypoint: vec![FAKE_ONEAGENT_PATH.to_owned()],
        env: vec![
            "PATH=/usr/bin:/bin".to_owned(),
            format!("FAKE_ONEAGENT_VERSION={version}"),
        ],
        labels,
        healthcheck: Some(vec!["CMD-SHELL".to_owned(), ONEAGENT_HEALTHCHECK.to_owned()]),
        created: created()?,
    };
    let layers = [layer.to_tar(mtime)?];
    oci::write_archive(&config, &layers, mtime, &archive_path(dir, repository, &tag))
}

fn sample_app_image(binaries: &Binaries, tag: &str, mtime: u64, dir: &Path) -> anyhow::Result<ImageArchive> {
    let program = read(&binaries.sample_app)?;
    ensure!(
        interpreter(&program)?.is_some(),
        "{} must be dynamically linked (built for {DYNAMIC_TARGET})",
        binaries.sample_app.display()
    );
    let mut layer = Layer::new();
    layer.file("/usr/local/bin/sample-app", 0o755, program)?;
    for library in shared_libraries(&binaries.sample_app)? {
        let path = library.to_string_lossy();
        layer.file(&path, 0o755, read(&library)?)?;
    }
    layer.dir("/tmp", 0o1777)?;
    let user = IMAGE_USER;
    let config = ImageConfig {
        name: SAMPLE_APP_IMAGE.to_owned(),
        tag: tag.to_owned(),
        user: Some(format!("{user}:{user}")),
        entrypoint: vec!["/usr/local/bin/sample-app".to_owned()],
        env: vec!["SAMPLE_APP_PORT=8080".to_owned()],
        labels: oci_labels(
            SAMPLE_APP_IMAGE,
            VERSION,
            "Dynamically linked sample application for injection tests",
        ),
        healthcheck: None,
        created: created()?,
    };
    let layers = [layer.to_tar(mtime)?];
    oci::write_archive(&config, &layers, mtime, &archive_path(dir, &config.name, tag))
}

/// The shared libraries `program` loads, with its dynamic loader, as `ldd` resolves them on this host;
/// they go into the image at the same paths.
pub fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd (from glibc's libc-bin) to find the sample app's libraries")?;
    ensure!(
        output.status.success(),
        "ldd {} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    parse_ldd(&String::from_utf8_lossy(&output.stdout))
}

fn parse_ldd(output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let resolved = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: {} not found on this host", name.trim());
                }
                rest.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        // The vDSO (`linux-vdso.so.1 (0x...)`) is no file.
        if let Some(path) = resolved.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    libraries.sort();
    libraries.dedup();
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_files() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5b3f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0a1c1e0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1bfff000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c21b000)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn oneagent_tags_are_the_first_three_parts() {
        assert_eq!(oneagent_tag("1.277.0.20230914-094321").unwrap(), "1.277.0");
        assert_eq!(oneagent_tag("1.2.3").unwrap(), "1.2.3");
        assert!(oneagent_tag("latest").is_err());
        assert!(oneagent_tag("1.2").is_err());
    }

    #[test]
    fn epoch_seconds_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_694_699_001), "2023-09-14T13:43:21Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tags_are_never_latest() {
        assert_eq!(Profile::Release.tag(), VERSION);
        assert_eq!(Profile::Test.tag(), format!("{VERSION}-dev"));
    }
}
