//! Rooms on the connection host's groups extension (`[extensions.groups] enabled = true` on the
//! host, with `presence = "frames"`: the host tells a room's other members of every join and leave).
//!
//! A room is a group; the calls go to the management endpoint (the same base URL as
//! `@connections`, stage included):
//! - join: `PUT {endpoint}/@connections/{id}/groups/{room}`: 204, or 410 when the connection is gone;
//! - leave: `DELETE {endpoint}/@connections/{id}/groups/{room}`: 204;
//! - broadcast: `POST {endpoint}/@groups/{room}[?exclude={id}]` with the message as the body: the
//!   host sends it to every member and answers `{"delivered":N,"failed":M}`;
//! - members: `GET {endpoint}/@groups/{room}?limit=N[&nextToken=T]`: one page,
//!   `{"members":[{"connectionId","principal","joinedAt"}…],"connectionIds":[...],"nextToken":"..."}`
//!   ([`GroupsRooms::members_page`], [`GroupsRooms::members_with_presence`]);
//! - count: `GET {endpoint}/@groups/{room}/count`: `{"count":N}` ([`GroupsRooms::count`]).
//!
//! Every call is signed with SigV4 (service `execute-api`) with the same credentials and region as
//! the `@connections` client it is opened with, so a host that requires signatures
//! (`management.auth.mode = "sigv4"`, or `auto` off loopback) accepts it like PostToConnection.
//!
//! The host removes a connection from its groups when it closes, so [`Rooms::rooms_of`] answers
//! `None`, and announces joins and leaves itself (`{"type":"presence","group":…}` frames), so
//! [`Rooms::announces_presence`] is `true`. Room names `.` and `..` are refused: URL parsers
//! resolve them as path segments, whatever their encoding.

use super::presence::{Member, MemberPage};
use super::{BroadcastReport, Rooms, RoomsError};
use crate::Management;
use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::config::SharedCredentialsProvider;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use std::sync::LazyLock;
use std::time::Duration;

/// Members asked for per page (the host's maximum).
const PAGE_SIZE: usize = 1000;

/// Everything but RFC 3986's unreserved characters is encoded, so `=`, `/`, `?`, `&`, `%` and `+`
/// in IDs, room names and tokens reach the host as data.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The HTTP client every [`GroupsRooms`] of the process shares, so connections are reused across
/// events.
pub fn shared_http_client() -> reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            // Well inside API Gateway's 29 s integration timeout, so a stuck host surfaces as an
            // error the handler can report.
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    });
    CLIENT.clone()
}

/// Rooms as connection-host groups at one management endpoint.
#[derive(Debug, Clone)]
pub struct GroupsRooms {
    http: reqwest::Client,
    endpoint: String,
    signer: Option<Signer>,
}

/// What SigV4 needs: the credentials (refreshed by their provider, as the SDK's are) and the
/// region the host checks the scope against.
#[derive(Debug, Clone)]
struct Signer {
    credentials: SharedCredentialsProvider,
    region: String,
}

impl Signer {
    /// Adds the SigV4 headers for `execute-api` to `request`.
    async fn sign(&self, request: &mut reqwest::Request) -> Result<(), RoomsError> {
        crate::sigv4::sign_request(&self.credentials, &self.region, "execute-api", request)
            .await
            .map_err(RoomsError::Signing)
    }
}

#[derive(Deserialize)]
struct Count {
    count: u64,
}

#[derive(Deserialize)]
struct Delivery {
    delivered: usize,
    failed: usize,
}

impl GroupsRooms {
    /// Groups at `endpoint`, the management endpoint (e.g. `http://127.0.0.1:8080/dev`), called
    /// unsigned: only for a host whose management API checks no signatures (loopback).
    pub fn new(http: reqwest::Client, endpoint: &str) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            signer: None,
        }
    }

    /// Groups at the endpoint of `management`, every call signed with its credentials and region
    /// (see [`Management::from_sdk_config`]; without them the calls are unsigned, as [`Self::new`]).
    pub fn for_management(http: reqwest::Client, management: &Management) -> Self {
        let signer = management.signing().map(|(credentials, region)| Signer {
            credentials: credentials.clone(),
            region: region.clone(),
        });
        Self {
            signer,
            ..Self::new(http, management.endpoint())
        }
    }

    fn encode(component: &str) -> String {
        utf8_percent_encode(component, COMPONENT).to_string()
    }

    fn membership_url(&self, room: &str, connection_id: &str) -> Result<String, RoomsError> {
        Ok(format!(
            "{}/@connections/{}/groups/{}",
            self.endpoint,
            Self::encode(connection_id),
            Self::encode(checked(room)?)
        ))
    }

    fn group_url(&self, room: &str) -> Result<String, RoomsError> {
        Ok(format!(
            "{}/@groups/{}",
            self.endpoint,
            Self::encode(checked(room)?)
        ))
    }

    /// Sends a request and returns the response when its status is `expected`.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        expected: StatusCode,
    ) -> Result<reqwest::Response, RoomsError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut request = request.build()?;
        if let Some(signer) = &self.signer {
            signer.sign(&mut request).await?;
        }
        let response = self.http.execute(request).await?;
        match response.status() {
            status if status == expected => Ok(response),
            StatusCode::GONE => Err(RoomsError::Gone),
            status => {
                let mut body = response.text().await.unwrap_or_default();
                body.truncate(body.floor_char_boundary(200));
                Err(RoomsError::Host {
                    operation,
                    status: status.as_u16(),
                    body,
                })
            }
        }
    }
}

impl GroupsRooms {
    /// One page of `room`'s members with their principal and join time: at most `limit` (1 to
    /// 1000), after `next_token` (from the previous page; `None` for the first).
    pub async fn members_page(
        &self,
        room: &str,
        limit: usize,
        next_token: Option<&str>,
    ) -> Result<MemberPage, RoomsError> {
        let mut url = format!("{}?limit={limit}", self.group_url(room)?);
        if let Some(token) = next_token {
            url.push_str("&nextToken=");
            url.push_str(&Self::encode(token));
        }
        let response = self
            .call("GET group", Method::GET, url, None, StatusCode::OK)
            .await?;
        serde_json::from_slice(&response.bytes().await?)
            .map_err(|e| RoomsError::Unexpected(format!("members page: {e}")))
    }

    /// Every member of `room` with its principal and join time, read in pages of 1000; fails with
    /// [`RoomsError::TooManyMembers`] rather than hold more than `bound` of them.
    pub async fn members_with_presence(
        &self,
        room: &str,
        bound: usize,
    ) -> Result<Vec<Member>, RoomsError> {
        let mut members = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.members_page(room, PAGE_SIZE, token.as_deref()).await?;
            members.extend(page.members);
            if members.len() > bound {
                return Err(RoomsError::TooManyMembers {
                    room: room.to_string(),
                    bound,
                });
            }
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(members),
            }
        }
    }

    /// How many members `room` has (0 for a room nobody joined), without listing them.
    pub async fn count(&self, room: &str) -> Result<u64, RoomsError> {
        let url = format!("{}/count", self.group_url(room)?);
        let response = self
            .call("GET group count", Method::GET, url, None, StatusCode::OK)
            .await?;
        let count: Count = serde_json::from_slice(&response.bytes().await?)
            .map_err(|e| RoomsError::Unexpected(format!("count: {e}")))?;
        Ok(count.count)
    }
}

/// `.` and `..` cannot be sent as path segments: the URL would be rewritten to another path.
fn checked(room: &str) -> Result<&str, RoomsError> {
    if room == "." || room == ".." {
        return Err(RoomsError::UnsupportedRoomName(room.to_string()));
    }
    Ok(room)
}

#[async_trait]
impl Rooms for GroupsRooms {
    async fn join(&self, room: &str, connection_id: &str) -> Result<(), RoomsError> {
        let url = self.membership_url(room, connection_id)?;
        self.call(
            "PUT group membership",
            Method::PUT,
            url,
            None,
            StatusCode::NO_CONTENT,
        )
        .await?;
        Ok(())
    }

    async fn leave(&self, room: &str, connection_id: &str) -> Result<(), RoomsError> {
        let url = self.membership_url(room, connection_id)?;
        match self
            .call(
                "DELETE group membership",
                Method::DELETE,
                url,
                None,
                StatusCode::NO_CONTENT,
            )
            .await
        {
            // A gone connection has left every group already.
            Ok(_) | Err(RoomsError::Gone) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, RoomsError> {
        let members = self.members_with_presence(room, usize::MAX).await?;
        Ok(members.into_iter().map(|m| m.connection_id).collect())
    }

    async fn broadcast(
        &self,
        room: &str,
        data: &[u8],
        exclude: Option<&str>,
    ) -> Result<BroadcastReport, RoomsError> {
        let mut url = self.group_url(room)?;
        if let Some(exclude) = exclude {
            url.push_str("?exclude=");
            url.push_str(&Self::encode(exclude));
        }
        let response = self
            .call(
                "POST group",
                Method::POST,
                url,
                Some(data.to_vec()),
                StatusCode::OK,
            )
            .await?;
        let delivery: Delivery = serde_json::from_slice(&response.bytes().await?)
            .map_err(|e| RoomsError::Unexpected(format!("broadcast answer: {e}")))?;
        // The host drops closed connections from their groups itself: nothing to remove here.
        Ok(BroadcastReport {
            delivered: delivery.delivered,
            failed: delivery.failed,
            gone_removed: 0,
        })
    }

    async fn rooms_of(&self, _connection_id: &str) -> Result<Option<Vec<String>>, RoomsError> {
        Ok(None)
    }

    fn announces_presence(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms() -> GroupsRooms {
        GroupsRooms::new(reqwest::Client::new(), "http://127.0.0.1:8080/dev/")
    }

    #[test]
    fn ids_and_names_are_percent_encoded_in_paths() {
        assert_eq!(
            rooms()
                .membership_url("a b/c?d", "BFaT_fALIAMCKug=")
                .unwrap(),
            "http://127.0.0.1:8080/dev/@connections/BFaT_fALIAMCKug%3D/groups/a%20b%2Fc%3Fd"
        );
        assert_eq!(
            rooms().group_url("lobby.1-x_y").unwrap(),
            "http://127.0.0.1:8080/dev/@groups/lobby.1-x_y"
        );
    }

    #[test]
    fn dot_segments_are_refused() {
        for room in [".", ".."] {
            assert!(matches!(
                rooms().group_url(room),
                Err(RoomsError::UnsupportedRoomName(_))
            ));
        }
        assert!(rooms().group_url("...").is_ok());
    }
}
