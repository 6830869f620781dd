//! Fuzzes what a brokerless peer (`plane-peer`: tcp, quic, http) makes of
//! the envelopes it receives, after `plane_core::wire` decoded them: the
//! input is one single-buffer envelope, then a length-delimited stream of
//! them, as the transports read it.
//!
//! - `decode_inbound` (a serving process): a call re-encodes with
//!   `call_envelope` to an envelope that decodes to the same endpoint,
//!   instance, id, message and stream flag; a refusal is `InvalidArgument`
//!   (no endpoint, bad instance) or `Decode` (a kind callers never send);
//!   a credit grant's header, whatever it holds, is taken without panic;
//! - `decode_reply` (a caller): a frame re-encodes with `frame_envelope` to
//!   the same frame; an error survives `Envelope::error` -> `to_error` with
//!   its kind and message; a refusal is `Decode`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plane_core::request::flow::Credit;
use plane_core::request::Call;
use plane_core::wire::{self, DelimitedDecoder, Envelope, EnvelopeKind};
use plane_core::ErrorKind;
use plane_peer::{Inbound, Reply};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = wire::decode(Bytes::copy_from_slice(data)) {
        check(env);
    }
    let mut dec = DelimitedDecoder::new();
    dec.push(data);
    while let Ok(Some(env)) = dec.next_envelope() {
        check(env);
    }
});

fn check(env: Envelope) {
    check_inbound(env.clone());
    check_reply(env);
}

fn check_inbound(env: Envelope) {
    let kind = env.kind;
    match plane_peer::decode_inbound(env) {
        Ok(Inbound::Call {
            endpoint,
            instance,
            incoming,
        }) => {
            assert_eq!(kind, EnvelopeKind::Request);
            let mut call = Call::new(endpoint.clone(), incoming.message.body.clone());
            call.id = incoming.id;
            call.message.headers = incoming.message.headers.clone();
            call.stream = incoming.stream;
            let again = plane_peer::call_envelope(call, instance);
            let again = wire::decode(wire::encode(&again)).expect("a call envelope decodes");
            match plane_peer::decode_inbound(again) {
                Ok(Inbound::Call {
                    endpoint: e,
                    instance: i,
                    incoming: c,
                }) => {
                    assert_eq!(e, endpoint);
                    assert_eq!(i, instance);
                    assert_eq!(c.id, incoming.id);
                    assert_eq!(c.message, incoming.message);
                    assert_eq!(c.stream, incoming.stream);
                }
                other => panic!("a call re-encoded decodes to {other:?}"),
            }
        }
        Ok(Inbound::Credit(_, grant)) => {
            assert_eq!(kind, EnvelopeKind::Ack);
            let credit = Credit::new(plane_peer::WINDOW);
            credit.grant_header(grant.as_deref());
            credit.grant_header(grant.as_deref());
        }
        Ok(Inbound::Cancel(..)) => {
            assert!(matches!(kind, EnvelopeKind::Stop | EnvelopeKind::Kill));
        }
        Ok(Inbound::Heartbeat(_)) => assert_eq!(kind, EnvelopeKind::Heartbeat),
        Err(e) => match e.kind() {
            ErrorKind::InvalidArgument => assert_eq!(kind, EnvelopeKind::Request),
            ErrorKind::Decode => assert!(!matches!(
                kind,
                EnvelopeKind::Request
                    | EnvelopeKind::Stop
                    | EnvelopeKind::Kill
                    | EnvelopeKind::Heartbeat
                    | EnvelopeKind::Ack
            )),
            other => panic!("decode_inbound refused with {other:?}: {e:?}"),
        },
    }
}

fn check_reply(env: Envelope) {
    let id = env.id;
    match plane_peer::decode_reply(env) {
        Ok(Reply::Frame(frame)) => {
            let again = plane_peer::frame_envelope(id, frame.clone());
            let again = wire::decode(wire::encode(&again)).expect("a frame envelope decodes");
            match plane_peer::decode_reply(again) {
                Ok(Reply::Frame(f)) => assert_eq!(f, frame),
                other => panic!("a frame re-encoded decodes to {other:?}"),
            }
        }
        Ok(Reply::Error(e)) => {
            let back = Envelope::error(id, &e).to_error();
            assert_eq!(back.kind(), e.kind());
            assert_eq!(back.message(), e.message());
        }
        Ok(Reply::Heartbeat) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e:?}"),
    }
}
