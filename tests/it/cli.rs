//! The berth CLI against berth and against real etcd.
