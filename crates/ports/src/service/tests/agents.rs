//! `put_agent`, `rotate_agent_key` and `authenticate_agent`: keys are issued on creation and on
//! rotation, only their hashes reach the registry, and verification needs the key itself.

use cm_domain::KeyHash;
use mockall::Sequence;
use mockall::predicate::eq;

use super::{Calls, Doubles, agent, agent_id};
use crate::auth::hash_key;
use crate::store::{StoreError, Upserted};
use crate::{Registered, Settings};

fn down() -> StoreError {
    StoreError::Unavailable("down".to_owned())
}

#[tokio::test]
async fn creating_an_agent_issues_a_key_and_stores_only_its_hash() {
    let mut d = Doubles::new();
    let mut seq = Sequence::new();
    d.agents
        .expect_upsert()
        .with(eq(agent("a1", &["g"])))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(Upserted::Created));
    let stored = Calls::<KeyHash>::new();
    let seen = stored.clone();
    d.agents
        .expect_set_key_hash()
        .withf(|id, _| *id == agent_id("a1"))
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, hash| {
            seen.push(hash.clone());
            Ok(true)
        });
    let got = d
        .manager(Settings::default())
        .put_agent(&agent("a1", &["g"]))
        .await
        .unwrap();
    assert_eq!(got.upserted, Upserted::Created);
    let key = got.key.expect("a key on creation");
    assert_eq!(stored.all(), vec![hash_key(key.expose())]);
    assert_ne!(stored.all()[0].as_str(), key.expose());
}

#[tokio::test]
async fn updating_an_agent_keeps_its_key_and_issues_none() {
    let mut d = Doubles::new();
    d.agents
        .expect_upsert()
        .returning(|_| Ok(Upserted::Updated));
    d.agents.expect_set_key_hash().never();
    let got = d
        .manager(Settings::default())
        .put_agent(&agent("a1", &[]))
        .await
        .unwrap();
    assert_eq!(
        got,
        Registered {
            upserted: Upserted::Updated,
            key: None
        }
    );
}

#[tokio::test]
async fn an_agent_deleted_before_its_key_was_stored_gets_no_key() {
    let mut d = Doubles::new();
    d.agents
        .expect_upsert()
        .returning(|_| Ok(Upserted::Created));
    d.agents.expect_set_key_hash().returning(|_, _| Ok(false));
    let got = d
        .manager(Settings::default())
        .put_agent(&agent("a1", &[]))
        .await
        .unwrap();
    assert_eq!(got.upserted, Upserted::Created);
    assert!(got.key.is_none());
}

#[tokio::test]
async fn a_storage_failure_while_registering_is_returned() {
    let mut d = Doubles::new();
    d.agents.expect_upsert().returning(|_| Err(down()));
    d.agents.expect_set_key_hash().never();
    let m = d.manager(Settings::default());
    assert_eq!(m.put_agent(&agent("a1", &[])).await.unwrap_err(), down());

    let mut d = Doubles::new();
    d.agents
        .expect_upsert()
        .returning(|_| Ok(Upserted::Created));
    d.agents.expect_set_key_hash().returning(|_, _| Err(down()));
    let m = d.manager(Settings::default());
    assert_eq!(m.put_agent(&agent("a1", &[])).await.unwrap_err(), down());
}

#[tokio::test]
async fn rotating_a_key_stores_the_hash_of_a_fresh_key() {
    let mut d = Doubles::new();
    let stored = Calls::<KeyHash>::new();
    let seen = stored.clone();
    d.agents
        .expect_set_key_hash()
        .withf(|id, _| *id == agent_id("a1"))
        .times(2)
        .returning(move |_, hash| {
            seen.push(hash.clone());
            Ok(true)
        });
    let m = d.manager(Settings::default());
    let first = m.rotate_agent_key(&agent_id("a1")).await.unwrap().unwrap();
    let second = m.rotate_agent_key(&agent_id("a1")).await.unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(stored.all(), vec![first.hash(), second.hash()]);
}

#[tokio::test]
async fn rotating_the_key_of_an_unknown_agent_is_none() {
    let mut d = Doubles::new();
    d.agents.expect_set_key_hash().returning(|_, _| Ok(false));
    let got = d
        .manager(Settings::default())
        .rotate_agent_key(&agent_id("ghost"))
        .await
        .unwrap();
    assert!(got.is_none());
}

#[tokio::test]
async fn a_storage_failure_while_rotating_is_returned() {
    let mut d = Doubles::new();
    d.agents.expect_set_key_hash().returning(|_, _| Err(down()));
    let err = d
        .manager(Settings::default())
        .rotate_agent_key(&agent_id("a1"))
        .await
        .unwrap_err();
    assert_eq!(err, down());
}

#[tokio::test]
async fn only_the_agents_own_key_authenticates_it() {
    let key = crate::AgentKey::generate().unwrap();
    let hash = key.hash();
    let mut d = Doubles::new();
    d.agents
        .expect_key_hash()
        .with(eq(agent_id("a1")))
        .returning(move |_| Ok(Some(hash.clone())));
    let m = d.manager(Settings::default());
    let a1 = agent_id("a1");
    assert!(m.authenticate_agent(&a1, key.expose()).await.unwrap());
    let other = crate::AgentKey::generate().unwrap();
    for wrong in [other.expose(), "", key.hash().as_str()] {
        assert!(!m.authenticate_agent(&a1, wrong).await.unwrap(), "{wrong}");
    }
}

#[tokio::test]
async fn an_unknown_agent_or_one_without_a_key_does_not_authenticate() {
    let mut d = Doubles::new();
    d.agents.expect_key_hash().returning(|_| Ok(None));
    let m = d.manager(Settings::default());
    assert!(!m.authenticate_agent(&agent_id("a1"), "").await.unwrap());
    assert!(
        !m.authenticate_agent(&agent_id("a1"), "anything")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_storage_failure_while_authenticating_is_returned_not_a_refusal() {
    let mut d = Doubles::new();
    d.agents.expect_key_hash().returning(|_| Err(down()));
    let err = d
        .manager(Settings::default())
        .authenticate_agent(&agent_id("a1"), "k")
        .await
        .unwrap_err();
    assert_eq!(err, down());
}
