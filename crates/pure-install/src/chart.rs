//! The parts of the Helm chart (`chart/`) generated from this crate, so that the chart cannot drift from
//! the code: the RBAC of the operator, the webhook and the CSI driver. `cargo xtask generate` writes them;
//! a test fails when the committed files differ from [`rbac_yaml`] and [`csi_rbac_yaml`].

use serde_json::Value;

use crate::Installation;

/// Where the operator's and the webhook's RBAC are committed, relative to the workspace root.
pub const CHART_RBAC_PATH: &str = "chart/templates/rbac.yaml";
/// Where the CSI driver's RBAC is committed (rendered only with `csidriver.enabled`).
pub const CHART_CSI_RBAC_PATH: &str = "chart/templates/csi/rbac.yaml";
/// The namespace of the namespaced objects and the subjects: the release's.
pub const RELEASE_NAMESPACE: &str = "{{ .Release.Namespace }}";

const HEADER: &str = "# Generated from crates/pure-install by `cargo xtask generate`. Do not edit.\n";

/// The operator's and the webhook's ClusterRoles, Roles and bindings as chart templates.
pub fn rbac_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from(HEADER);
    push_objects(&mut out, chart_installation().rbac())?;
    Ok(out)
}

/// The CSI driver's ClusterRole, Role and bindings as a chart template, rendered only when the driver is.
pub fn csi_rbac_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from(HEADER);
    out.push_str("{{- if .Values.csidriver.enabled }}\n");
    push_objects(&mut out, chart_installation().csi_rbac())?;
    out.push_str("{{- end }}\n");
    Ok(out)
}

fn chart_installation() -> Installation {
    Installation {
        namespace: RELEASE_NAMESPACE.to_owned(),
        ..Installation::new("unused")
    }
}

fn push_objects(out: &mut String, objects: Vec<Value>) -> Result<(), serde_saphyr::ser::Error> {
    for mut object in objects {
        // Objects installed by Helm say so, as the chart's hand-written templates do.
        if let Some(labels) = object
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.insert(
                pure_desired::pod::LABEL_MANAGED_BY.to_owned(),
                Value::String("{{ .Release.Service }}".to_owned()),
            );
        }
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&object)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csi_rbac_is_conditional_and_every_subject_is_in_the_release_namespace() {
        let csi = csi_rbac_yaml().unwrap();
        assert!(csi.contains("{{- if .Values.csidriver.enabled }}"));
        for text in [rbac_yaml().unwrap(), csi] {
            assert!(text.contains("namespace: \"{{ .Release.Namespace }}\""), "{text}");
            assert!(!text.contains("namespace: dynatrace\n"), "{text}");
        }
    }
}
