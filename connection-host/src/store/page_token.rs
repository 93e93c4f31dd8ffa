//! The `nextToken` of a group listing: the shard of the groups table the page ended in and the
//! last connection ID listed, in URL-safe base64 so that it travels in a query string as it is.
//! The memory store has one shard (0).

use super::StoreError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Where a listing resumes: after `after` in shard `shard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PageToken {
    pub shard: u32,
    pub after: String,
}

impl PageToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.shard, self.after))
    }

    /// Reads a token [`encode`](Self::encode) wrote, for a store of `shards` shards.
    pub fn decode(token: &str, shards: u32) -> Result<Self, StoreError> {
        let invalid = || {
            StoreError::InvalidToken(
                "not a token a listing of this group returned; start again without one".into(),
            )
        };
        let text = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(text).map_err(|_| invalid())?;
        let (shard, after) = text.split_once(':').ok_or_else(invalid)?;
        let shard: u32 = shard.parse().map_err(|_| invalid())?;
        if shard >= shards || after.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            shard,
            after: after.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        let token = PageToken {
            shard: 3,
            after: "ab:c=".into(),
        };
        assert_eq!(PageToken::decode(&token.encode(), 8).unwrap(), token);
        // A shard the table does not have, plain text, an empty position, bad base64.
        assert!(PageToken::decode(&token.encode(), 3).is_err());
        for bad in ["after-this", "", "%%%", &URL_SAFE_NO_PAD.encode("1:")] {
            assert!(
                matches!(PageToken::decode(bad, 8), Err(StoreError::InvalidToken(_))),
                "{bad}"
            );
        }
    }
}
