//! Namespaces: a name and labels, which namespace selectors match.

use k8s_openapi::api::core::v1 as core;

use super::{Labels, ModelError, ObjectKey, ObjectRef};

/// The label the API server puts on every namespace, set to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace: its name and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, always including [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

impl Namespace {
    /// A namespace known only by name (no object for it was seen): it carries
    /// just the label the API server would give it.
    #[must_use]
    pub fn implicit(name: &str) -> Self {
        let mut labels = Labels::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        Self {
            name: name.to_owned(),
            labels,
        }
    }

    /// Reduces a k8s-openapi Namespace.
    pub fn from_resource(ns: &core::Namespace) -> Result<Self, ModelError> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(ModelError {
                object: ObjectRef {
                    kind: "Namespace".into(),
                    key: ObjectKey::cluster_scoped(name),
                },
                field: "metadata.name".into(),
                message: "a namespace needs a name".into(),
            });
        }
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        // The API server sets this label on every namespace and overwrites any
        // other value a client gives it.
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        Ok(Self { name, labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_name_label_is_forced() {
        let ns: core::Namespace =
            serde_saphyr::from_str("metadata: {name: x, labels: {kubernetes.io/metadata.name: y}}")
                .unwrap();
        let ns = Namespace::from_resource(&ns).unwrap();
        assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "x");
    }
}
