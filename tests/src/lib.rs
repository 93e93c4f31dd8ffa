//! End-to-end scenarios shared by the tests in tests/tests/; the harness they run on (host
//! processes, clients, the DynamoDB test endpoint, waiting) is the workspace's test kit,
//! `test_kit` (tests/kit).

pub mod chat;
