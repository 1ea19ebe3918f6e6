//! openraft's own storage conformance suite against berth's log store and state machine:
//! a fresh temporary directory, store and log for every case.

use berth_consensus::log_store::LogStore;
use berth_consensus::state_machine::StateMachine;
use berth_consensus::types::TypeConfig;
use berth_store::{Store, StoreOptions};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("test setup");
        let store =
            Store::open(&dir.path().join("store"), StoreOptions::default()).expect("test setup");
        let log = LogStore::open(&dir.path().join("log")).expect("test setup");
        let sm = StateMachine::new(store, &dir.path().join("snapshots")).expect("test setup");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage conformance suite");
}
