//! Watch responses for the server's hot path: fan-out sends one response per watcher, and
//! most of them differ only in the watch ID. A [`WatchFrame`] carries the header and events
//! already encoded, shared between watchers, so each watcher's response is three copies into
//! the stream's buffer instead of a clone and a full protobuf encoding.
//!
//! The bytes on the wire are an ordinary `WatchResponse`: clients see no difference.

use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

use crate::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::mvccpb::Event;

/// `WatchResponse` field numbers written here.
const HEADER: u32 = 1;
const WATCH_ID: u32 = 2;
const EVENTS: u32 = 11;

/// One response on a watch stream.
#[derive(Debug, Clone)]
pub enum WatchFrame {
    /// A response built as a message (control responses, prev_kv, fragments).
    Message(WatchResponse),
    /// A response assembled from pre-encoded parts.
    Shared {
        /// The encoded header field ([`encode_header`]).
        header: Bytes,
        /// The watch the events are for.
        watch_id: i64,
        /// The encoded events field ([`encode_events`]).
        events: Bytes,
    },
}

/// The `header` field of a `WatchResponse`, encoded.
pub fn encode_header(header: &ResponseHeader) -> Bytes {
    let mut buf = Vec::with_capacity(header.encoded_len() + 2);
    prost::encoding::message::encode(HEADER, header, &mut buf);
    buf.into()
}

/// The `events` field of a `WatchResponse` holding `events`, encoded.
pub fn encode_events(events: &[Event]) -> Bytes {
    let len = events.iter().map(|e| e.encoded_len() + 4).sum();
    let mut buf = Vec::with_capacity(len);
    for ev in events {
        prost::encoding::message::encode(EVENTS, ev, &mut buf);
    }
    buf.into()
}

impl WatchFrame {
    /// The response as a message (the JSON gateway's view; the gRPC path never decodes).
    pub fn to_message(&self) -> Result<WatchResponse, prost::DecodeError> {
        match self {
            WatchFrame::Message(m) => Ok(m.clone()),
            shared => {
                let mut buf = Vec::new();
                shared.write(&mut buf);
                WatchResponse::decode(buf.as_slice())
            }
        }
    }

    /// Writes the response's protobuf encoding.
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            WatchFrame::Message(m) => m.encode_raw(buf),
            WatchFrame::Shared {
                header,
                watch_id,
                events,
            } => {
                buf.put_slice(header);
                if *watch_id != 0 {
                    prost::encoding::int64::encode(WATCH_ID, watch_id, buf);
                }
                buf.put_slice(events);
            }
        }
    }
}

/// The Watch service's codec: [`WatchFrame`]s out, `WatchRequest`s in.
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchFrameCodec;

/// Writes [`WatchFrame`]s.
#[derive(Debug, Default)]
pub struct WatchFrameEncoder;

impl Encoder for WatchFrameEncoder {
    type Item = WatchFrame;
    type Error = Status;

    fn encode(&mut self, item: WatchFrame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write(buf);
        Ok(())
    }
}

impl Codec for WatchFrameCodec {
    type Encode = WatchFrame;
    type Decode = WatchRequest;
    type Encoder = WatchFrameEncoder;
    type Decoder = ProstDecoder<WatchRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        WatchFrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvccpb::{event::EventType, KeyValue};

    #[test]
    fn a_shared_frame_is_the_same_watch_response_on_the_wire() {
        let header = ResponseHeader {
            cluster_id: u64::MAX - 7,
            member_id: 42,
            revision: 1234,
            raft_term: 3,
        };
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                r#type: if i == 1 {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(KeyValue {
                    key: format!("key-{i}").into_bytes(),
                    value: vec![b'v'; 300],
                    mod_revision: 1230 + i,
                    ..Default::default()
                }),
                prev_kv: None,
            })
            .collect();
        for watch_id in [0, 1, -1, 1 << 40] {
            let want = WatchResponse {
                header: Some(header),
                watch_id,
                events: events.clone(),
                ..Default::default()
            };
            let frame = WatchFrame::Shared {
                header: encode_header(&header),
                watch_id,
                events: encode_events(&events),
            };
            let mut got = Vec::new();
            frame.write(&mut got);
            assert_eq!(got, want.encode_to_vec(), "watch_id {watch_id}");
            assert_eq!(WatchResponse::decode(got.as_slice()).expect("decode"), want);
        }
    }
}
