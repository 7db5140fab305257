//! Label selectors, as pod and namespace selectors use them.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use super::Labels;

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values (empty for `Exists` and `DoesNotExist`).
    pub values: Vec<String>,
}

/// A label selector: every `matchLabels` pair and every requirement must
/// hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    /// Exact `key: value` pairs.
    pub match_labels: Vec<(String, String)>,
    /// `matchExpressions`.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether the selector matches everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    pub(super) fn from_resource(
        sel: &meta::LabelSelector,
        field: &str,
    ) -> Result<Self, (String, String)> {
        let match_labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut match_expressions = Vec::new();
        for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
            let at = |f: &str| format!("{field}.matchExpressions[{i}].{f}");
            if r.key.is_empty() {
                return Err((at("key"), "a requirement needs a key".into()));
            }
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err((
                        at("operator"),
                        format!("'{other}' is not one of In, NotIn, Exists, DoesNotExist"),
                    ));
                }
            };
            let values = r.values.clone().unwrap_or_default();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err((
                        at("values"),
                        format!("must be non-empty when operator is {}", r.operator),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err((
                        at("values"),
                        format!("must be empty when operator is {}", r.operator),
                    ));
                }
                _ => {}
            }
            match_expressions.push(Requirement {
                key: r.key.clone(),
                operator,
                values,
            });
        }
        Ok(Self {
            match_labels,
            match_expressions,
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{} (everything)");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_operators() {
        let labels: Labels = [("a".to_owned(), "1".to_owned())].into();
        let req = |operator, values: &[&str]| LabelSelector {
            match_labels: vec![],
            match_expressions: vec![Requirement {
                key: "a".into(),
                operator,
                values: values.iter().map(|s| (*s).to_owned()).collect(),
            }],
        };
        let none = Labels::new();
        assert!(req(Operator::In, &["1", "2"]).matches(&labels));
        assert!(!req(Operator::In, &["1"]).matches(&none));
        assert!(!req(Operator::NotIn, &["1"]).matches(&labels));
        assert!(
            req(Operator::NotIn, &["1"]).matches(&none),
            "NotIn matches a missing key"
        );
        assert!(req(Operator::Exists, &[]).matches(&labels));
        assert!(!req(Operator::Exists, &[]).matches(&none));
        assert!(req(Operator::DoesNotExist, &[]).matches(&none));
        assert!(!req(Operator::DoesNotExist, &[]).matches(&labels));
        assert!(LabelSelector::default().matches(&none));
        let both = LabelSelector {
            match_labels: vec![("a".into(), "1".into())],
            ..req(Operator::NotIn, &["1"])
        };
        assert!(
            !both.matches(&labels),
            "matchLabels and matchExpressions are ANDed"
        );
    }
}
