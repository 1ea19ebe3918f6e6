//! The `meta` Raft group's state: the MVCC store, seen by consensus through the byte-level
//! [`GroupState`] operations. Commands and results cross as the store's log encoding
//! ([`berth_store::codec`]); consensus never decodes them.

use std::io;
use std::sync::Arc;

use berth_consensus::{ApplyError, GroupState, GroupView};
use berth_store::codec::{decode_command, encode_result};
use berth_store::{Store, StoreView};

fn io_err(e: berth_store::StoreError) -> io::Error {
    match e {
        berth_store::StoreError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// The store as the meta group's state.
pub struct MetaGroup(pub Arc<Store>);

impl GroupState for MetaGroup {
    fn check(&self, command: &[u8]) -> Result<(), String> {
        decode_command(command).map(|_| ())
    }

    fn apply(&self, commands: &[&[u8]], meta: (&str, &[u8])) -> Result<Vec<Vec<u8>>, ApplyError> {
        // Every command is decoded (with its keyspace) before any is applied: a batch holding
        // one this build cannot read is applied not at all.
        let cmds = commands
            .iter()
            .enumerate()
            .map(|(at, c)| {
                decode_command(c).map_err(|reason| ApplyError::Undecodable { at, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let results = self
            .0
            .apply_batch_with(&cmds, &[meta], false)
            .map_err(io_err)?;
        Ok(results.iter().map(encode_result).collect())
    }

    fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.0.blob(key).map_err(io_err)
    }

    fn durable_view(&self) -> io::Result<Arc<dyn GroupView>> {
        Ok(Arc::new(MetaView(self.0.durable_view().map_err(io_err)?)))
    }

    fn install(&self, snapshot: &mut dyn io::Read) -> io::Result<()> {
        self.0.install_snapshot(snapshot).map_err(io_err)
    }
}

/// A durable view of the store, as a snapshot to send.
#[derive(Debug)]
struct MetaView(StoreView);

impl GroupView for MetaView {
    fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.0.blob(key).map_err(io_err)
    }

    fn write_to(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.0
            .write_snapshot(|chunk| sink(chunk).map_err(berth_store::StoreError::Io))
            .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::etcdserverpb::PutRequest;
    use berth_store::codec::encode_command;
    use berth_store::{Command, StoreOptions};

    /// A batch holding a command this build cannot decode is refused whole, naming the
    /// command's position (the state machine turns it into the entry's log index).
    #[test]
    fn an_undecodable_command_applies_nothing_of_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store"), StoreOptions::default()).expect("store");
        let group = MetaGroup(store.clone());
        let put = encode_command(&Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        let garbage = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(group.check(&put).is_ok());
        assert!(group.check(&garbage).is_err());
        let err = group
            .apply(&[&put, &garbage], ("raft.state", b"x"))
            .expect_err("refused");
        assert!(
            matches!(err, ApplyError::Undecodable { at: 1, .. }),
            "{err}"
        );
        assert_eq!(store.revision(), 1, "nothing of the batch was applied");
        assert_eq!(group.meta("raft.state").expect("meta"), None);
        let results = group.apply(&[&put], ("raft.state", b"x")).expect("applied");
        assert_eq!(results.len(), 1);
        assert_eq!(store.revision(), 2);
        assert_eq!(group.meta("raft.state").expect("meta"), Some(b"x".to_vec()));
    }
}
