//! The sample DynaKubes under `samples/dynakube/<version>/<mode>.yaml`, which users copy: tests apply every
//! one of them, so a sample that the CRD, the validating webhook or the operator would refuse fails a test.

use anyhow::Context as _;
use serde_json::{Value, json};

/// The placeholder API URL of the samples; the validating webhook refuses it on purpose.
pub const PLACEHOLDER_API_URL: &str = "https://ENVIRONMENTID.live.dynatrace.com/api";

/// One sample file.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The DynaKube version it is written in (`v1beta6`).
    pub version: String,
    /// The OneAgent mode, from the file name (`cloudNativeFullStack`).
    pub mode: String,
    /// The object as written.
    pub object: Value,
}

impl Sample {
    /// A DNS-1035 name for the sample's object: `<version>-<mode>` in lower case.
    pub fn name(&self) -> String {
        format!("{}-{}", self.version, self.mode.to_lowercase())
    }

    /// The object made fit to share a cluster with the other samples and tests: named [`Sample::name`], in no
    /// namespace (the API's own), with `api_url`, OneAgents only on nodes labelled `<node_label>=<name>` and
    /// injection only into namespaces labelled `monitoring=<name>`, so that no two samples conflict.
    pub fn confined(&self, api_url: &str, node_label: &str) -> Value {
        let name = self.name();
        let mut object = self.object.clone();
        object["metadata"] = json!({ "name": name });
        let spec = &mut object["spec"];
        spec["apiUrl"] = json!(api_url);
        let node_selector = json!({ node_label: name });
        let namespace_selector = json!({ "matchLabels": { "monitoring": name } });
        if spec.get("namespaceSelector").is_some() {
            spec["namespaceSelector"] = namespace_selector.clone();
        }
        if let Some(classic) = spec.get_mut("classicFullStack") {
            classic["nodeSelector"] = node_selector.clone();
        }
        if let Some(mode) = spec.pointer_mut(&format!("/oneAgent/{}", self.mode)) {
            if mode.get("namespaceSelector").is_some() {
                mode["namespaceSelector"] = namespace_selector;
            }
            if self.mode != "applicationMonitoring" {
                mode["nodeSelector"] = node_selector;
            }
        }
        object
    }
}

/// Every sample, in file-name order.
pub fn dynakubes() -> anyhow::Result<Vec<Sample>> {
    let root = crate::tools::workspace_root().join("samples/dynakube");
    let mut samples = Vec::new();
    let mut versions: Vec<_> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .collect::<Result<_, _>>()?;
    versions.sort_by_key(std::fs::DirEntry::file_name);
    for version in versions {
        let mut files: Vec<_> = std::fs::read_dir(version.path())?.collect::<Result<_, _>>()?;
        files.sort_by_key(std::fs::DirEntry::file_name);
        for file in files {
            let path = file.path();
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let object: Value =
                serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            let version_name = version.file_name().to_string_lossy().into_owned();
            anyhow::ensure!(
                object["apiVersion"] == format!("dynatrace.com/{version_name}"),
                "{} is in the directory of {version_name} but written as {}",
                path.display(),
                object["apiVersion"]
            );
            anyhow::ensure!(
                object["spec"]["apiUrl"] == PLACEHOLDER_API_URL,
                "{}: samples keep the placeholder API URL",
                path.display()
            );
            let mode = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            samples.push(Sample {
                version: version_name,
                mode,
                object,
            });
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every served DynaKube version has a sample of each of its modes.
    #[test]
    fn every_version_has_a_sample_of_every_mode() {
        let samples = dynakubes().unwrap();
        let modes = [
            "applicationMonitoring",
            "classicFullStack",
            "cloudNativeFullStack",
            "hostMonitoring",
        ];
        for version in ["v1beta1", "v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
            let found: Vec<&str> = samples
                .iter()
                .filter(|s| s.version == version)
                .map(|s| s.mode.as_str())
                .collect();
            assert_eq!(found, modes, "{version}");
        }
        let alpha: Vec<&str> = samples
            .iter()
            .filter(|s| s.version == "v1alpha1")
            .map(|s| s.mode.as_str())
            .collect();
        assert_eq!(alpha, ["classicFullStack"]);
        assert_eq!(samples.len(), 25);
    }

    /// Each sample sets the mode its file is named after, and only that one.
    #[test]
    fn each_sample_is_the_mode_of_its_file_name() {
        for sample in dynakubes().unwrap() {
            let spec = &sample.object["spec"];
            let modes: Vec<&String> = match spec["oneAgent"].as_object() {
                Some(one_agent) => one_agent.keys().filter(|k| k.as_str() != "hostGroup").collect(),
                None => spec
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k == "classicFullStack")
                    .collect(),
            };
            assert_eq!(modes, [&sample.mode], "{}", sample.name());
        }
    }

    #[test]
    fn confining_changes_the_selectors_only() {
        let samples = dynakubes().unwrap();
        let cloud = samples
            .iter()
            .find(|s| s.version == "v1beta6" && s.mode == "cloudNativeFullStack")
            .unwrap();
        let object = cloud.confined("https://x.example/api", "sample");
        let mode = &object["spec"]["oneAgent"]["cloudNativeFullStack"];
        assert_eq!(
            mode["nodeSelector"],
            json!({ "sample": "v1beta6-cloudnativefullstack" })
        );
        assert_eq!(
            mode["namespaceSelector"]["matchLabels"]["monitoring"],
            "v1beta6-cloudnativefullstack"
        );
        assert_eq!(
            mode["tolerations"],
            cloud.object["spec"]["oneAgent"]["cloudNativeFullStack"]["tolerations"]
        );
        let v1beta1 = samples
            .iter()
            .find(|s| s.version == "v1beta1" && s.mode == "applicationMonitoring")
            .unwrap()
            .confined("https://x.example/api", "sample");
        assert_eq!(
            v1beta1["spec"]["namespaceSelector"]["matchLabels"]["monitoring"],
            "v1beta1-applicationmonitoring"
        );
        assert!(
            v1beta1["spec"]["oneAgent"]["applicationMonitoring"]
                .get("nodeSelector")
                .is_none()
        );
        let alpha = samples
            .iter()
            .find(|s| s.version == "v1alpha1")
            .unwrap()
            .confined("https://x.example/api", "sample");
        assert_eq!(
            alpha["spec"]["classicFullStack"]["nodeSelector"],
            json!({ "sample": "v1alpha1-classicfullstack" })
        );
    }
}
