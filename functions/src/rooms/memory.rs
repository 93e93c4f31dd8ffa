//! Rooms in one process's memory, for unit tests of handlers: broadcasts post to each member
//! through a [`PostToConnection`] (e.g. [`crate::testing::Recorder`]) and remove members that
//! answer Gone, as the DynamoDB backend does.

use super::{BroadcastReport, Rooms, RoomsError, broadcast_each};
use crate::management::PostToConnection;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Rooms held in memory.
pub struct MemoryRooms {
    rooms: Mutex<BTreeMap<String, BTreeSet<String>>>,
    poster: Arc<dyn PostToConnection>,
}

impl MemoryRooms {
    /// Empty rooms whose broadcasts go through `poster`.
    pub fn new(poster: Arc<dyn PostToConnection>) -> Self {
        Self {
            rooms: Mutex::default(),
            poster,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, BTreeSet<String>>) -> T) -> T {
        f(&mut self.rooms.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Rooms for MemoryRooms {
    async fn join(&self, room: &str, connection_id: &str) -> Result<(), RoomsError> {
        self.with(|rooms| {
            rooms
                .entry(room.to_string())
                .or_default()
                .insert(connection_id.to_string());
        });
        Ok(())
    }

    async fn leave(&self, room: &str, connection_id: &str) -> Result<(), RoomsError> {
        self.with(|rooms| {
            if let Some(members) = rooms.get_mut(room) {
                members.remove(connection_id);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        });
        Ok(())
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, RoomsError> {
        Ok(self.with(|rooms| {
            rooms
                .get(room)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default()
        }))
    }

    async fn broadcast(
        &self,
        room: &str,
        data: &[u8],
        exclude: Option<&str>,
    ) -> Result<BroadcastReport, RoomsError> {
        broadcast_each(self, self.poster.as_ref(), room, data, exclude).await
    }

    async fn rooms_of(&self, connection_id: &str) -> Result<Option<Vec<String>>, RoomsError> {
        Ok(Some(self.with(|rooms| {
            rooms
                .iter()
                .filter(|(_, members)| members.contains(connection_id))
                .map(|(room, _)| room.clone())
                .collect()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Recorder;

    #[tokio::test]
    async fn broadcast_reaches_members_but_the_excluded_and_drops_the_gone() {
        let recorder = Arc::new(Recorder::default());
        let rooms = MemoryRooms::new(recorder.clone());
        for id in ["a", "b", "c", "d"] {
            rooms.join("lobby", id).await.unwrap();
        }
        rooms.join("other", "a").await.unwrap();
        recorder.set_gone("c");

        let report = rooms.broadcast("lobby", b"hi", Some("a")).await.unwrap();

        assert_eq!(
            report,
            BroadcastReport {
                delivered: 2,
                failed: 0,
                gone_removed: 1
            }
        );
        let mut to: Vec<String> = recorder.posts().into_iter().map(|p| p.0).collect();
        to.sort();
        assert_eq!(to, ["b", "d"]);
        assert_eq!(rooms.members("lobby").await.unwrap(), ["a", "b", "d"]);
        assert_eq!(
            rooms.rooms_of("a").await.unwrap(),
            Some(vec!["lobby".to_string(), "other".to_string()])
        );
        assert!(rooms.is_member("lobby", "b").await.unwrap());
        rooms.leave("lobby", "b").await.unwrap();
        assert!(!rooms.is_member("lobby", "b").await.unwrap());
    }
}
