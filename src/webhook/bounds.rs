//! Bounds checked on the raw JSON of a Pod that asks for an injection, before it is decoded
//! into [`k8s_openapi::api::core::v1::Pod`] (second review H1): its size, its number of
//! JSON values, and the lengths of the lists the injection reads or grows (containers,
//! init containers, and per container `env`, `envFrom`, `args`, `command`,
//! `volumeMounts`; the Pod's `volumes`). The passes keep nothing of the Pod: they count.
//! A Pod past a bound is denied naming the field and the bound, so that neither decoding
//! nor the injection's work can grow with an adversarial Pod (docs/webhook.md, "Limits").

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::Denial;
use super::mutate::MAX_CONTAINERS;

/// Largest Pod (its JSON, `request.object`) injected: etcd refuses objects over 1.5 MiB
/// (stored as protobuf, smaller than the JSON of the review), so a real Pod is far below.
pub const MAX_POD_BYTES: usize = 1536 * 1024;
/// Most JSON values (objects, arrays, strings, numbers…, keys not counted) in a Pod
/// injected: bounds the decoded Pod's memory whatever lists it is made of.
pub const MAX_POD_VALUES: usize = 50_000;
/// Most `env` entries of one container.
pub const MAX_ENV: usize = 1024;
/// Most `envFrom` entries of one container.
pub const MAX_ENV_FROM: usize = 64;
/// Most `command` or `args` entries of one container.
pub const MAX_ARGS: usize = 1024;
/// Most `volumeMounts` of one container.
pub const MAX_VOLUME_MOUNTS: usize = 256;
/// Most `volumes` of the Pod.
pub const MAX_VOLUMES: usize = 256;
/// Containers and init containers read: [`MAX_CONTAINERS`] and our own three (an injected
/// Pod re-admitted); the exact count is checked after decoding.
const MAX_RAW_CONTAINERS: usize = MAX_CONTAINERS + 3;

/// Checks `object` (a Pod's raw JSON) against the bounds, without decoding it.
///
/// # Errors
/// A 400 [`Denial`] naming the first bound exceeded, or `request.object` when the JSON
/// does not have the shape of a Pod (never quoting it).
pub fn check(object: &str) -> Result<(), Denial> {
    if object.len() > MAX_POD_BYTES {
        return Err(Denial::invalid(
            "request.object",
            format!(
                "the Pod is {} bytes of JSON, more than the {MAX_POD_BYTES} the webhook injects \
                 into (etcd stores at most 1.5 MiB)",
                object.len()
            ),
        ));
    }
    let unreadable = || Denial::invalid("request.object", "is not a Pod this webhook can read");
    let pod: PodLens = serde_json::from_str(object).map_err(|_| unreadable())?;
    if let Some(spec) = &pod.spec {
        check_lists(spec)?;
    }
    let values = Cell::new(0usize);
    let mut de = serde_json::Deserializer::from_str(object);
    let counted = Counter(&values).deserialize(&mut de);
    if values.get() > MAX_POD_VALUES {
        return Err(Denial::invalid(
            "request.object",
            format!("the Pod holds more than {MAX_POD_VALUES} JSON values"),
        ));
    }
    counted.map_err(|_| unreadable())
}

/// The lists' lengths against their bounds.
fn check_lists(spec: &SpecLens) -> Result<(), Denial> {
    let containers = spec.containers.total + spec.init_containers.total;
    if containers > MAX_RAW_CONTAINERS || spec.ephemeral_containers.0 > MAX_RAW_CONTAINERS {
        return Err(Denial::invalid(
            "spec.containers",
            format!("more than {MAX_CONTAINERS} containers and init containers in one Pod"),
        ));
    }
    if spec.volumes.0 > MAX_VOLUMES {
        return Err(Denial::invalid(
            "spec.volumes",
            format!("more than {MAX_VOLUMES} volumes in one Pod"),
        ));
    }
    let lists = [
        ("containers", &spec.containers.each),
        ("initContainers", &spec.init_containers.each),
    ];
    for (list, each) in lists {
        for (i, c) in each.iter().enumerate() {
            let fields = [
                ("env", c.env.0, MAX_ENV),
                ("envFrom", c.env_from.0, MAX_ENV_FROM),
                ("command", c.command.0, MAX_ARGS),
                ("args", c.args.0, MAX_ARGS),
                ("volumeMounts", c.volume_mounts.0, MAX_VOLUME_MOUNTS),
            ];
            for (field, n, max) in fields {
                if n > max {
                    return Err(Denial::invalid(
                        format!("spec.{list}[{i}].{field}"),
                        format!(
                            "more than {max} entries (the webhook injects into Pods with at most {max})"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Counts every JSON value below it into the cell, keeping none, and stops (with an error)
/// past [`MAX_POD_VALUES`].
struct Counter<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Counter<'_> {
    fn one<E: de::Error>(&self) -> Result<(), E> {
        let n = self.0.get() + 1;
        self.0.set(n);
        match n > MAX_POD_VALUES {
            true => Err(E::custom("too many values")),
            false => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.one()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.one()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.one()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.one()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.one()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.one()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq.next_element_seed(Counter(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Counter(self.0))?;
        }
        Ok(())
    }
}

/// The length of a JSON array (absent or null: 0), its elements skipped.
#[derive(Default)]
struct Len(usize);

impl<'de> serde::Deserialize<'de> for Len {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Len, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Len;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Len, E> {
                Ok(Len(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Len, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Len(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of containers: the lengths of the first [`MAX_RAW_CONTAINERS`] + 1 containers'
/// lists, and how many there are in all.
#[derive(Default)]
struct Containers {
    each: Vec<ContainerLens>,
    total: usize,
}

impl<'de> serde::Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Containers, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of containers")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Containers, E> {
                Ok(Containers::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Containers, A::Error> {
                let mut out = Containers::default();
                loop {
                    if out.each.len() <= MAX_RAW_CONTAINERS {
                        match seq.next_element::<ContainerLens>()? {
                            Some(c) => out.each.push(c),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    out.total += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(serde::Deserialize)]
struct PodLens {
    #[serde(default)]
    spec: Option<SpecLens>,
}

#[derive(serde::Deserialize)]
struct SpecLens {
    #[serde(default)]
    containers: Containers,
    #[serde(rename = "initContainers", default)]
    init_containers: Containers,
    #[serde(rename = "ephemeralContainers", default)]
    ephemeral_containers: Len,
    #[serde(default)]
    volumes: Len,
}

#[derive(serde::Deserialize)]
struct ContainerLens {
    #[serde(default)]
    env: Len,
    #[serde(rename = "envFrom", default)]
    env_from: Len,
    #[serde(default)]
    command: Len,
    #[serde(default)]
    args: Len,
    #[serde(rename = "volumeMounts", default)]
    volume_mounts: Len,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_within_bounds_pass_and_each_bound_is_named() {
        let small = json!({"metadata": {"name": "a"}, "spec": {
            "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": null}],
            "volumes": [{"name": "v", "emptyDir": {}}]}});
        assert_eq!(check(&small.to_string()), Ok(()));
        assert_eq!(check(r#"{"metadata":{}}"#), Ok(()));
        let big = |field: &str, n: usize| {
            let list: Vec<serde_json::Value> = (0..n).map(|_| json!({"name": "B"})).collect();
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b", field: list}]}}).to_string()
        };
        for (field, max) in [
            ("env", MAX_ENV),
            ("envFrom", MAX_ENV_FROM),
            ("command", MAX_ARGS),
            ("args", MAX_ARGS),
            ("volumeMounts", MAX_VOLUME_MOUNTS),
        ] {
            assert_eq!(check(&big(field, max)), Ok(()), "{field}");
            let d = check(&big(field, max + 1)).unwrap_err();
            assert_eq!(d.field, format!("spec.containers[1].{field}"), "{d}");
            assert!(d.message.contains(&format!("more than {max}")), "{d}");
        }
        let inits: Vec<_> = (0..=MAX_RAW_CONTAINERS)
            .map(|_| json!({"name": "i"}))
            .collect();
        let d = check(&json!({"spec": {"initContainers": inits}}).to_string()).unwrap_err();
        assert_eq!(d.field, "spec.containers");
        let volumes: Vec<_> = (0..=MAX_VOLUMES).map(|_| json!({"name": "v"})).collect();
        let d = check(&json!({"spec": {"volumes": volumes}}).to_string()).unwrap_err();
        assert_eq!(d.field, "spec.volumes");
        // Values in lists the injection does not read: bounded all the same.
        let cmd: Vec<_> = (0..MAX_POD_VALUES).map(|_| "x").collect();
        let probe = json!({"spec": {"containers": [{"name": "a",
            "livenessProbe": {"exec": {"command": cmd}}}]}});
        let d = check(&probe.to_string()).unwrap_err();
        assert!(d.message.contains("JSON values"), "{d}");
        // Not the shape of a Pod: unreadable, nothing quoted.
        let d = check(r#"{"spec":{"containers":[{"env":"s3cr3t"}]}}"#).unwrap_err();
        assert_eq!(d.message, "is not a Pod this webhook can read");
    }
}
