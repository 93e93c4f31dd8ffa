//! The DynamoDB-API endpoint the tests run against, and fresh tables on it.

use crate::host::init_env;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use connection_host::config::StoreKind;
use connection_host::store::DynamoDbStore;

/// The DynamoDB-API endpoint for tests (`DYNAMODB_TEST_ENDPOINT`, set by `tests/run.sh`, which
/// starts moto). Unset: panics when `CI` is set, so CI cannot pass without running the DynamoDB
/// tests; otherwise prints `SKIPPED {test}: …` to stderr and returns `None`, and the test returns.
pub fn dynamodb_test_endpoint(test: &str) -> Option<String> {
    match std::env::var("DYNAMODB_TEST_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => panic!(
            "{test}: DYNAMODB_TEST_ENDPOINT is not set but CI is: the DynamoDB tests must run \
             (tests/run.sh starts moto and sets it)"
        ),
        _ => {
            // Written to the real stderr, past the test harness's capture, so a skip is visible.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: DYNAMODB_TEST_ENDPOINT is not set (tests/run.sh starts moto and sets it)"
            );
            None
        }
    }
}

/// A DynamoDB client for the test endpoint; moto accepts any credentials.
pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// `{prefix}-{random}`: a table name no other test, concurrent or earlier, uses on the shared
/// endpoint.
pub fn unique_table(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A host's connections, groups and sessions tables on fresh names, created for one test; [`Self::delete`]
/// removes them at its end.
pub struct TestTables {
    /// The host's store on these tables (a client of its own, for checks from the test).
    pub store: DynamoDbStore,
    /// The default configuration with the store pointed at these tables.
    pub config: connection_host::Config,
}

impl TestTables {
    /// The configuration of a DynamoDB store at `endpoint` on fresh table names (not created).
    pub fn config(endpoint: &str) -> connection_host::Config {
        let mut config = connection_host::Config::default();
        config.store.kind = StoreKind::Dynamodb;
        config.store.connections_table = unique_table("test-connections");
        config.store.groups_table = unique_table("test-groups");
        config.store.sessions_table = unique_table("test-sessions");
        config.store.endpoint_url = endpoint.to_string();
        config
    }

    /// Creates the tables; `None` (and a printed reason) when no endpoint is configured outside CI.
    pub async fn create(test: &str) -> Option<Self> {
        let endpoint = dynamodb_test_endpoint(test)?;
        init_env();
        let config = Self::config(&endpoint);
        let store = DynamoDbStore::from_env(&config).await;
        store.create_tables().await.expect("create the test tables");
        Some(Self { store, config })
    }

    /// Deletes the tables (errors ignored: the names are never reused).
    pub async fn delete(self) {
        for table in [
            &self.config.store.connections_table,
            &self.config.store.groups_table,
            &self.config.store.sessions_table,
        ] {
            let _ = self
                .store
                .client()
                .delete_table()
                .table_name(table)
                .send()
                .await;
        }
    }

    /// The DynamoDB endpoint the tables live on.
    pub fn endpoint(&self) -> &str {
        &self.config.store.endpoint_url
    }

    /// The connections table's name.
    pub fn connections(&self) -> &str {
        &self.config.store.connections_table
    }

    /// The groups table's name.
    pub fn groups(&self) -> &str {
        &self.config.store.groups_table
    }

    /// The sessions table's name.
    pub fn sessions(&self) -> &str {
        &self.config.store.sessions_table
    }
}
