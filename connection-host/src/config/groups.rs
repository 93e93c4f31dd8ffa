//! `[extensions.groups]`: the groups API, how its broadcasts fan out, and its presence
//! notifications.

use super::*;

/// The groups extension (`/@connections/{id}/groups/{group}`, `/@groups/{group}`). Off by
/// default; `groups = true` under `[extensions]` is short for `enabled = true` with every other
/// setting at its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Serve the groups API.
    pub enabled: bool,
    /// Host-to-host delivery calls (one per other live host) one broadcast makes at once.
    pub remote_concurrency: usize,
    /// How long a host-to-host delivery call may take; the members of a host that does not answer
    /// in time are in no count of the answer.
    #[serde(with = "humantime_serde")]
    pub remote_timeout: Duration,
    /// Deliveries per second one group's broadcasts may make on average; 0 turns the limit off.
    pub fanout_rate: u32,
    /// Deliveries a group may make at once before `fanout_rate` applies. A broadcast is admitted
    /// while its group is within this allowance and then sends to every member, so one
    /// broadcast is never cut short; the group's later broadcasts wait for it to be paid back.
    pub fanout_burst: u32,
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
            remote_concurrency: 8,
            remote_timeout: Duration::from_secs(2),
            fanout_rate: 500_000,
            fanout_burst: 1_000_000,
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

/// Reads `[extensions] groups` as either a switch (`true`/`false`, the form before the table
/// existed) or a table.
pub(super) fn switch_or_table<'de, D>(deserializer: D) -> Result<GroupsConfig, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct SwitchOrTable;
    impl<'de> serde::de::Visitor<'de> for SwitchOrTable {
        type Value = GroupsConfig;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true, false or a table of settings")
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
    deserializer.deserialize_any(SwitchOrTable)
}
