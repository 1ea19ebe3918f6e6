//! openraft's own storage conformance suite against berth's log store and state machine over
//! the meta group's state (the MVCC store, as the server runs it): a fresh temporary
//! directory, store and log for every case, in both storage IO modes
//! (blocking threads with group commit, and inline as the simulation runs them), and with
//! threads where lone appends may also be fsynced on the calling task (as on a follower).

use berth_consensus::log_store::LogStore;
use berth_consensus::state_machine::StateMachine;
use berth_consensus::types::TypeConfig;
use berth_consensus::StorageIo;
use berth_server::meta_group::MetaGroup;
use berth_store::{Store, StoreOptions};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;

/// The storage IO mode, and whether lone appends may be fsynced on the calling task.
struct Builder(StorageIo, bool);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("test setup");
        let store =
            Store::open(&dir.path().join("store"), StoreOptions::default()).expect("test setup");
        let log = LogStore::open_with(&dir.path().join("log"), None, self.0).expect("test setup");
        log.flush_inline(self.1);
        let sm = StateMachine::new(
            Arc::new(MetaGroup(store)),
            &dir.path().join("snapshots"),
            self.0,
        )
        .expect("test setup");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder(StorageIo::Threads, false))
        .await
        .expect("openraft storage conformance suite");
}

#[tokio::test(flavor = "current_thread")]
async fn openraft_storage_suite_inline_io() {
    Suite::test_all(Builder(StorageIo::Inline, false))
        .await
        .expect("openraft storage conformance suite, inline storage IO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_lone_appends_inline() {
    Suite::test_all(Builder(StorageIo::Threads, true))
        .await
        .expect("openraft storage conformance suite, lone appends fsynced inline");
}
