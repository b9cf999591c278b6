//! Two tenants, `acme` and `beta`, on one broker: their tokens, events and
//! endpoints.

use stevedore::{
    auth::{hash_token, Role, Token},
    pb::{
        self, admin_client::AdminClient, event::Payload, publisher_client::PublisherClient,
        Endpoint,
    },
};

use super::{Authed, TestServer};

pub const ROOT: &str = "root-token";
pub const ACME_ADMIN: &str = "acme-admin-token";
pub const BETA_ADMIN: &str = "beta-admin-token";
pub const ACME_PUB: &str = "acme-pub-token";
pub const BETA_PUB: &str = "beta-pub-token";
pub const ACME_SUB: &str = "acme-sub-token";
pub const BETA_SUB: &str = "beta-sub-token";

/// Config tokens for `(name, role, tenant, token)`.
pub fn tenant_tokens(tokens: &[(&str, Role, Option<&str>, &str)]) -> Vec<Token> {
    tokens
        .iter()
        .map(|(name, role, tenant, token)| Token {
            name: name.to_string(),
            role: *role,
            tenant: tenant.map(str::to_owned),
            sha256: hash_token(token.as_bytes()),
        })
        .collect()
}

/// A broker with a global admin and an admin, publisher and subscriber for
/// each of the tenants `acme` and `beta`; `tweak` adjusts its config.
pub async fn two_tenants(tweak: impl FnOnce(&mut stevedore::config::Config)) -> TestServer {
    let tokens = tenant_tokens(&[
        ("root", Role::Admin, None, ROOT),
        ("acme-admin", Role::Admin, Some("acme"), ACME_ADMIN),
        ("beta-admin", Role::Admin, Some("beta"), BETA_ADMIN),
        ("acme-pub", Role::Publisher, Some("acme"), ACME_PUB),
        ("beta-pub", Role::Publisher, Some("beta"), BETA_PUB),
        ("acme-sub", Role::Subscriber, Some("acme"), ACME_SUB),
        ("beta-sub", Role::Subscriber, Some("beta"), BETA_SUB),
    ]);
    TestServer::start_with(std::sync::Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.tokens = tokens;
        tweak(c);
    })
    .await
}

/// A pick confirmation of `tenant` (payload `tenant_id`).
pub fn pick_of(tenant: &str, order: &str) -> pb::Event {
    pb::Event {
        payload: Some(Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: tenant.into(),
            sales_order_id: order.into(),
            status: pb::PickStatus::Complete as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A custom event whose envelope names `tenant` (empty: none); its body
/// carries `owner` so a receiver can tell whose it is.
pub fn custom_of(tenant: &str, owner: &str) -> pb::Event {
    pb::Event {
        tenant: tenant.into(),
        payload: Some(Payload::Custom(pb::CustomEvent {
            r#type: "dock.door_opened".into(),
            data: Some(prost_types::Struct {
                fields: [(
                    "owner".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(owner.into())),
                    },
                )]
                .into(),
            }),
        })),
        ..Default::default()
    }
}

/// An endpoint to `url` with one attempt, at once.
pub fn hook(url: &str) -> Endpoint {
    Endpoint {
        url: url.into(),
        retry_schedule: vec![prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }],
        ..Default::default()
    }
}

/// Creates `e` as the caller of `admin`.
pub async fn create_as(admin: &mut AdminClient<Authed>, e: Endpoint) -> Endpoint {
    admin
        .create_endpoint(pb::CreateEndpointRequest { endpoint: Some(e) })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
}

/// Publishes `e` as the caller of `p`; its offset.
pub async fn publish_as(p: &mut PublisherClient<Authed>, e: pb::Event) -> u64 {
    p.publish(pb::PublishRequest { event: Some(e) })
        .await
        .unwrap()
        .into_inner()
        .offset
}
