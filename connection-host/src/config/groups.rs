//! `[extensions.groups]`: the groups API and its presence notifications.

use super::*;

/// The groups extension (`/@connections/{id}/groups/{group}`, `/@groups/{group}`). Written either
/// as `groups = true` (the API, no notifications) or as a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Serve the groups API.
    pub enabled: bool,
    /// What a join or leave (explicit, or when the connection ends) tells the group.
    pub presence: Presence,
    /// The route that receives presence events with `presence = "route"`; a MESSAGE event falls
    /// back to `$default` when there is no such route, as any message does.
    pub presence_route: String,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            presence: Presence::Off,
            presence_route: "$presence".into(),
        }
    }
}

/// How joins and leaves are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Not at all.
    #[default]
    Off,
    /// A `{"type":"presence",…}` text frame to every other member of the group.
    Frames,
    /// The same JSON as the body of a MESSAGE event to `presence_route`, with the joining or
    /// leaving connection's request context.
    Route,
}

/// `groups = true|false` (the form before presence existed) or the table.
pub(super) fn bool_or_table<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<GroupsConfig, D::Error> {
    struct Form;
    impl<'de> serde::de::Visitor<'de> for Form {
        type Value = GroupsConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false or a table")
        }
        fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<GroupsConfig, E> {
            Ok(GroupsConfig {
                enabled,
                ..GroupsConfig::default()
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<GroupsConfig, A::Error> {
            GroupsConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(Form)
}
