//! Property tests of the security apis (50–58) and of the SCRAM-SHA-256 grammar:
//! every request and response round-trips through the codec, and no bytes, however
//! hostile, panic a SCRAM parser or a decoder of these bodies.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use weir_protocol::messages::*;
use weir_protocol::scram::{self, ClientFinal, ClientFirst, ServerFinal, ServerFirst};
use weir_protocol::{ApiKey, Request, RequestFrame, ResponseBody, ResponseFrame, ServerCodec};

fn s() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn b() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn acl() -> impl Strategy<Value = AclEntry> {
    (s(), 0usize..4, s(), 0usize..8).prop_map(|(principal, r, pattern, o)| AclEntry {
        principal,
        resource_type: ResourceType::ALL[r],
        pattern,
        operation: Operation::ALL[o],
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (s(), b())
            .prop_map(|(mechanism, payload)| AuthenticateRequest { mechanism, payload }.into()),
        (s(), b(), any::<u32>(), b(), b()).prop_map(|(name, salt, iterations, k1, k2)| {
            UpsertUserRequest {
                name,
                credential: ScramCredential {
                    salt,
                    iterations,
                    stored_key: k1,
                    server_key: k2,
                },
            }
            .into()
        }),
        s().prop_map(|name| DeleteUserRequest { name }.into()),
        Just(ListUsersRequest {}.into()),
        (s(), s()).prop_map(|(principal, description)| CreateApiKeyRequest {
            principal,
            description
        }
        .into()),
        s().prop_map(|key_id| RevokeApiKeyRequest { key_id }.into()),
        Just(ListApiKeysRequest {}.into()),
        (0u8..2, acl()).prop_map(|(remove, entry)| AlterAclsRequest { remove, entry }.into()),
        s().prop_map(|principal| DescribeAclsRequest { principal }.into()),
    ]
}

fn response() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        (b(), 0u8..2, s()).prop_map(|(payload, done, principal)| AuthenticateResponse {
            payload,
            done,
            principal
        }
        .into()),
        (0u8..2).prop_map(|created| UpsertUserResponse { created }.into()),
        Just(DeleteUserResponse {}.into()),
        vec(s(), 0..4).prop_map(|users| ListUsersResponse { users }.into()),
        (s(), s()).prop_map(|(key_id, key)| CreateApiKeyResponse { key_id, key }.into()),
        Just(RevokeApiKeyResponse {}.into()),
        vec((s(), s(), s(), any::<u64>()), 0..3).prop_map(|keys| ListApiKeysResponse {
            keys: keys
                .into_iter()
                .map(|(key_id, principal, description, created_ms)| ApiKeyEntry {
                    key_id,
                    principal,
                    description,
                    created_ms
                })
                .collect()
        }
        .into()),
        (0u8..2).prop_map(|changed| AlterAclsResponse { changed }.into()),
        vec(acl(), 0..3).prop_map(|entries| DescribeAclsResponse { entries }.into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn security_requests_round_trip(id in any::<u32>(), request in request()) {
        let frame = RequestFrame::new(id, request);
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let decoded = ServerCodec::default().decode(&mut buf).unwrap().unwrap().unwrap();
        prop_assert_eq!(decoded, frame);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn security_responses_round_trip(id in any::<u32>(), body in response()) {
        let api = body.api_key();
        let header = weir_protocol::RequestHeader {
            api_key: api as u16,
            api_version: 0,
            correlation_id: id,
            priority: 0,
        };
        let frame = ResponseFrame::ok(&header, body);
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let decoded = ResponseFrame::decode(buf.freeze().slice(4..)).unwrap();
        prop_assert_eq!(decoded, frame);
    }

    /// Random bodies for the security apis are refused by name, never a panic.
    #[test]
    fn security_bodies_never_panic(api in 50u16..=58, body in vec(any::<u8>(), 0..128)) {
        let _ = Request::decode(api, 0, Bytes::from(body.clone()));
        let _ = ResponseBody::decode(api, 0, Bytes::from(body));
        prop_assert!(ApiKey::from_u16(api).is_some());
    }

    #[test]
    fn scram_parsers_never_panic(bytes in vec(any::<u8>(), 0..256), text in ".{0,200}") {
        for input in [&bytes[..], text.as_bytes()] {
            let _ = ClientFirst::parse(input);
            let _ = ServerFirst::parse(input);
            let _ = ClientFinal::parse(input);
            let _ = ServerFinal::parse(input);
        }
        for prefixed in [format!("n,,{text}"), format!("r={text}"), format!("c=biws,{text}"), format!("v={text}")] {
            let _ = ClientFirst::parse(prefixed.as_bytes());
            let _ = ServerFirst::parse(prefixed.as_bytes());
            let _ = ClientFinal::parse(prefixed.as_bytes());
            let _ = ServerFinal::parse(prefixed.as_bytes());
        }
    }

    /// Any user name (escaping included) and nonce survive a round trip.
    #[test]
    fn client_first_round_trips(user in "\\PC{1,24}", nonce in "[!-+--~]{1,32}") {
        let first = ClientFirst { user, nonce };
        let (parsed, bare) = ClientFirst::parse(first.message().as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &first);
        prop_assert_eq!(bare, first.bare());
    }

    /// A full exchange with any password succeeds, and a different password fails.
    #[test]
    fn exchanges_succeed_with_the_password_only(password in "\\PC{0,16}", other in "\\PC{0,16}", salt in vec(any::<u8>(), 16..20)) {
        let first = ClientFirst { user: "u".into(), nonce: "abc".into() };
        let sf = ServerFirst { nonce: "abcdef".into(), salt: salt.clone(), iterations: 4096 }.message();
        let cred = scram::credential(&password, &salt, 4096).unwrap();
        let (fin, expected) = scram::client_final(&first, &sf, &password).unwrap();
        let answer = scram::server_final(&cred, &first.bare(), &sf, &fin).unwrap();
        prop_assert!(scram::check_server_final(answer.message().as_bytes(), &expected).is_ok());
        let (wrong, _) = scram::client_final(&first, &sf, &other).unwrap();
        prop_assert_eq!(scram::server_final(&cred, &first.bare(), &sf, &wrong).is_ok(), password == other);
    }
}
