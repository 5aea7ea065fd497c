//! Prometheus label values in the convention's lower snake case. prometheus-client's derive
//! writes an enum's variant name as it is (`DeadLettered`); [`snake_case_labels!`] gives enums an
//! `EncodeLabelValue` that writes `dead_lettered`, so every label of every herald metric is an
//! enum with a fixed set of lower snake case values.

/// `DeadLettered` → `dead_lettered`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Implements `prometheus_client::encoding::EncodeLabelValue` for field-less enums (with
/// `Debug`), writing each variant's name in lower snake case.
#[macro_export]
macro_rules! snake_case_labels {
    ($($t:ty),+ $(,)?) => {
        $(
            impl ::prometheus_client::encoding::EncodeLabelValue for $t {
                fn encode(
                    &self,
                    encoder: &mut ::prometheus_client::encoding::LabelValueEncoder,
                ) -> ::std::fmt::Result {
                    ::std::fmt::Write::write_str(
                        encoder,
                        &$crate::labels::snake_case(&format!("{self:?}")),
                    )
                }
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
    enum Outcome {
        DeadLettered,
        Acked,
    }
    crate::snake_case_labels!(Outcome);

    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct Labels {
        outcome: Outcome,
    }

    #[test]
    fn label_values_are_lower_snake_case() {
        assert_eq!(snake_case("DeadLettered"), "dead_lettered");
        assert_eq!(snake_case("Acked"), "acked");
        assert_eq!(snake_case("NotInjected"), "not_injected");
        let mut registry = prometheus_client::registry::Registry::default();
        let family = prometheus_client::metrics::family::Family::<
            Labels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        registry.register("deliveries", "help", family.clone());
        family
            .get_or_create(&Labels {
                outcome: Outcome::DeadLettered,
            })
            .inc();
        family
            .get_or_create(&Labels {
                outcome: Outcome::Acked,
            })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("deliveries_total{outcome=\"dead_lettered\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("deliveries_total{outcome=\"acked\"} 1"),
            "{out}"
        );
    }
}
