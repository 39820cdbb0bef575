//! Session tests. Time is explicit: every test picks a base `Instant` and
//! moves it forward by exact offsets, so deadlines are checked to the
//! nanosecond.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::wire::{Action, Address, Destination, Extensions, NextHop};

const NS: Duration = Duration::from_nanos(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn server_config(keepalive_secs: u32) -> Config {
    Config {
        role: Role::Server,
        keepalive_secs,
        extensions: Extensions::NONE,
    }
}

fn client_config(keepalive_secs: u32) -> Config {
    Config {
        role: Role::Client,
        keepalive_secs,
        extensions: Extensions::NONE,
    }
}

fn hello(keepalive_secs: u32, is_server: bool) -> Message {
    Message::Hello(Hello {
        keepalive_secs,
        is_server,
        extensions: 0,
    })
}

fn update(vni: u32, last_octet: u8, action: Action) -> Update {
    let dest = Destination::new(Address::from(Ipv4Addr::new(10, 0, last_octet, 0)), 24).unwrap();
    let hop = NextHop::standard(Address::from(Ipv6Addr::LOCALHOST));
    Update::new(action, Vni(vni), dest, hop)
}

fn tx(session: &mut Session) -> Vec<Message> {
    std::iter::from_fn(|| session.poll_transmit()).collect()
}

fn events(session: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// A server session that received HELLO{client_ka} and its first KEEPALIVE
/// at `t0`, with all outputs drained.
fn established_server(t0: Instant, own_ka: u32, client_ka: u32) -> Session {
    let mut session = Session::new(server_config(own_ka), t0);
    session.handle_message(hello(client_ka, false), t0).unwrap();
    session.handle_message(Message::Keepalive, t0).unwrap();
    assert!(session.is_established());
    tx(&mut session);
    events(&mut session);
    session
}

/// A client session that got the server's HELLO{server_ka} and its first
/// KEEPALIVE at `t0`, with all outputs drained.
fn established_client(t0: Instant, own_ka: u32, server_ka: u32) -> Session {
    let mut session = Session::new(client_config(own_ka), t0);
    session.handle_message(hello(server_ka, true), t0).unwrap();
    session.handle_message(Message::Keepalive, t0).unwrap();
    assert!(session.is_established());
    tx(&mut session);
    events(&mut session);
    session
}

/// Asserts that `session` is closed with `reason` and that nothing can
/// revive it or make it emit anything.
fn assert_stays_closed(session: &mut Session, reason: &CloseReason, now: Instant) {
    assert_eq!(session.state(), State::Closed);
    assert!(session.is_closed());
    assert!(!session.is_established());
    assert_eq!(session.close_reason(), Some(reason));
    assert_eq!(session.poll_timeout(), None);
    assert_eq!(session.poll_transmit(), None);
    assert_eq!(session.poll_event(), None);
    let messages = [
        hello(5, false),
        hello(5, true),
        hello(0, false),
        Message::Keepalive,
        Message::Subscribe(Vni(1)),
        Message::Unsubscribe(Vni(1)),
        Message::Update(update(1, 1, Action::Add)),
    ];
    for msg in messages {
        assert_eq!(session.handle_message(msg, now), Err(reason.clone()));
    }
    for later in [now, now + s(1), now + s(3600)] {
        assert_eq!(session.handle_timeout(later), Err(reason.clone()));
    }
    assert!(!session.subscribe(Vni(77)));
    assert!(!session.unsubscribe(Vni(77)));
    assert_eq!(session.close_reason(), Some(reason));
    assert_eq!(session.state(), State::Closed);
    assert_eq!(session.poll_timeout(), None);
}

// ---------------------------------------------------------------- config

#[test]
fn config_zero_means_default_five_seconds() {
    for role in [Role::Server, Role::Client] {
        let config = Config {
            role,
            keepalive_secs: 0,
            extensions: Extensions::NONE,
        };
        assert_eq!(config.effective_keepalive_secs(), 5);
        assert_eq!(config.effective_keepalive(), s(5));
        let config = Config {
            role,
            keepalive_secs: 7,
            extensions: Extensions::NONE,
        };
        assert_eq!(config.effective_keepalive_secs(), 7);
        assert_eq!(config.effective_keepalive(), s(7));
    }
}

#[test]
fn timeout_multiply_is_exact() {
    assert_eq!(timeout_for(s(1)), ms(2500));
    assert_eq!(timeout_for(s(3)), ms(7500));
    assert_eq!(timeout_for(s(5)), ms(12500));
    assert_eq!(
        timeout_for(Duration::from_secs(u64::from(u32::MAX))),
        Duration::from_secs(u64::from(u32::MAX) * 5 / 2) + ms(500)
    );
}

#[test]
fn state_names_match_the_reference() {
    let names: Vec<_> = [
        State::Connecting,
        State::HelloSent,
        State::HelloReceived,
        State::Established,
        State::Retry,
        State::Closed,
    ]
    .iter()
    .map(|st| st.to_string())
    .collect();
    assert_eq!(
        names,
        [
            "CONNECTING",
            "HELLO_SENT",
            "HELLO_RECEIVED",
            "ESTABLISHED",
            "RETRY",
            "CLOSED"
        ]
    );
}

#[test]
fn close_reason_labels_are_distinct_and_display_is_readable() {
    let reasons = [
        CloseReason::ZeroKeepaliveInterval,
        CloseReason::DuplicateHello,
        CloseReason::KeepaliveBeforeHello,
        CloseReason::HandshakeNoHello { waited: ms(12500) },
        CloseReason::HandshakeNoKeepalive { waited: ms(12500) },
        CloseReason::KeepaliveTimeout { waited: ms(7500) },
    ];
    let labels: HashSet<_> = reasons.iter().map(CloseReason::label).collect();
    assert_eq!(labels.len(), reasons.len());
    for reason in &reasons {
        let label = reason.label();
        assert!(!label.is_empty());
        assert!(label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
        assert!(!reason.to_string().is_empty());
    }
    assert!(CloseReason::HandshakeNoHello { waited: ms(12500) }
        .to_string()
        .contains("12.5s"));
    assert!(CloseReason::HandshakeNoKeepalive { waited: ms(12500) }
        .to_string()
        .contains("KEEPALIVE"));
}

// ---------------------------------------------------------------- server

#[test]
fn server_starts_connecting_and_sends_nothing() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    assert_eq!(session.role(), Role::Server);
    assert_eq!(session.state(), State::Connecting);
    assert!(!session.is_established());
    assert_eq!(session.keepalive(), None);
    assert_eq!(session.close_reason(), None);
    assert_eq!(session.poll_timeout(), Some(t0 + ms(12500)));
    assert_eq!(tx(&mut session), []);
    assert_eq!(events(&mut session), []);
}

#[test]
fn server_sends_nothing_before_hello_however_long_it_waits() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    for step in 0..125 {
        session.handle_timeout(t0 + ms(step * 100)).unwrap();
        assert_eq!(tx(&mut session), []);
    }
    // Data before HELLO is accepted, but still nothing is sent.
    session
        .handle_message(Message::Subscribe(Vni(1)), t0 + s(1))
        .unwrap();
    session
        .handle_message(Message::Update(update(1, 1, Action::Add)), t0 + s(1))
        .unwrap();
    assert_eq!(tx(&mut session), []);
}

#[test]
fn server_replies_to_hello_with_exactly_one_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    session.handle_message(hello(5, false), t0 + s(1)).unwrap();
    assert_eq!(session.state(), State::HelloReceived);
    assert_eq!(session.keepalive(), Some(s(5)));
    assert_eq!(tx(&mut session), [hello(5, true)]);
    assert_eq!(events(&mut session), []);
    // Nothing more is sent while waiting for the first KEEPALIVE.
    session.handle_timeout(t0 + s(5)).unwrap();
    session.handle_timeout(t0 + s(10)).unwrap();
    assert_eq!(tx(&mut session), []);
}

#[test]
fn server_negotiates_the_minimum_in_both_directions() {
    // (own configured, client's proposal, expected)
    let cases = [
        (5, 3, 3),
        (5, 10, 5),
        (5, 5, 5),
        (2, 5, 2),
        (0, 7, 5),
        (0, 1, 1),
        (0, u32::MAX, 5),
        (u32::MAX, u32::MAX, u32::MAX),
        (u32::MAX, 1, 1),
    ];
    for (own, client, expected) in cases {
        let t0 = Instant::now();
        let mut session = Session::new(server_config(own), t0);
        session.handle_message(hello(client, false), t0).unwrap();
        assert_eq!(
            tx(&mut session),
            [hello(expected, true)],
            "own {own} client {client}"
        );
        let expected = Duration::from_secs(u64::from(expected));
        assert_eq!(session.keepalive(), Some(expected));
        session.handle_message(Message::Keepalive, t0).unwrap();
        assert_eq!(
            events(&mut session),
            [Event::Established {
                keepalive: expected
            }]
        );
    }
}

#[test]
fn server_ignores_is_server_in_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    session.handle_message(hello(4, true), t0).unwrap();
    assert_eq!(tx(&mut session), [hello(4, true)]);
    assert_eq!(session.state(), State::HelloReceived);
}

#[test]
fn server_closes_on_hello_with_zero_interval() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    let err = session.handle_message(hello(0, false), t0 + s(1));
    assert_eq!(err, Err(CloseReason::ZeroKeepaliveInterval));
    assert_eq!(session.keepalive(), None);
    assert_stays_closed(&mut session, &CloseReason::ZeroKeepaliveInterval, t0 + s(1));
}

#[test]
fn server_closes_on_keepalive_before_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    let err = session.handle_message(Message::Keepalive, t0);
    assert_eq!(err, Err(CloseReason::KeepaliveBeforeHello));
    assert_stays_closed(&mut session, &CloseReason::KeepaliveBeforeHello, t0);
}

#[test]
fn server_first_keepalive_establishes_and_is_echoed_once() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    session.handle_message(hello(3, false), t0).unwrap();
    assert_eq!(tx(&mut session), [hello(3, true)]);
    session
        .handle_message(Message::Keepalive, t0 + s(1))
        .unwrap();
    assert_eq!(session.state(), State::Established);
    assert!(session.is_established());
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    assert_eq!(
        events(&mut session),
        [Event::Established { keepalive: s(3) }]
    );
    // The keepalive timeout now runs from the KEEPALIVE, with the negotiated interval.
    assert_eq!(session.poll_timeout(), Some(t0 + s(1) + ms(7500)));
}

#[test]
fn server_echoes_every_keepalive_exactly_once() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 5, 5);
    for i in 1..=20 {
        session
            .handle_message(Message::Keepalive, t0 + s(i))
            .unwrap();
        assert_eq!(tx(&mut session), [Message::Keepalive], "keepalive {i}");
        assert_eq!(events(&mut session), [], "Established is emitted only once");
    }
    // Several KEEPALIVEs processed before draining: one echo each, in order.
    for _ in 0..3 {
        session
            .handle_message(Message::Keepalive, t0 + s(21))
            .unwrap();
    }
    assert_eq!(tx(&mut session), [Message::Keepalive; 3]);
}

#[test]
fn server_never_originates_a_keepalive() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 1, 1);
    // Feed a KEEPALIVE every second for a long time while ticking the timer
    // every 100 ms: the only KEEPALIVEs sent are the echoes.
    let mut now = t0;
    for tick in 1..=600u64 {
        now = t0 + ms(tick * 100);
        session.handle_timeout(now).unwrap();
        assert_eq!(tx(&mut session), [], "timer at {tick} sent something");
        if tick % 10 == 0 {
            session.handle_message(Message::Keepalive, now).unwrap();
            assert_eq!(tx(&mut session), [Message::Keepalive]);
        }
    }
    // Silence: nothing is sent until the session times out.
    let deadline = now + ms(2500);
    while now < deadline - ms(100) {
        now += ms(100);
        session.handle_timeout(now).unwrap();
        assert_eq!(tx(&mut session), []);
    }
    // The only deadline the server has is the peer's keepalive timeout.
    assert_eq!(session.poll_timeout(), Some(deadline));
}

#[test]
fn server_closes_on_second_hello_before_established() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    session.handle_message(hello(5, false), t0).unwrap();
    let err = session.handle_message(hello(5, false), t0);
    assert_eq!(err, Err(CloseReason::DuplicateHello));
    // The HELLO reply still queued is dropped: nothing goes to a closed peer.
    assert_stays_closed(&mut session, &CloseReason::DuplicateHello, t0);
}

#[test]
fn server_closes_on_second_hello_when_established() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 5, 5);
    let err = session.handle_message(hello(5, false), t0 + s(1));
    assert_eq!(err, Err(CloseReason::DuplicateHello));
    assert_stays_closed(&mut session, &CloseReason::DuplicateHello, t0 + s(1));
}

#[test]
fn server_second_hello_with_zero_interval_is_a_duplicate() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 5, 5);
    let err = session.handle_message(hello(0, false), t0);
    assert_eq!(err, Err(CloseReason::DuplicateHello));
}

#[test]
fn server_accepts_data_in_every_state_in_order_without_dedupe() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    let add = update(100, 1, Action::Add);
    let remove = update(100, 1, Action::Remove);
    let data = [
        Message::Subscribe(Vni(100)),
        Message::Subscribe(Vni(100)),
        Message::Update(add),
        Message::Update(add),
        Message::Unsubscribe(Vni(7)),
        Message::Update(remove),
    ];
    let expected = [
        Event::Subscribe(Vni(100)),
        Event::Subscribe(Vni(100)),
        Event::Update(add),
        Event::Update(add),
        Event::Unsubscribe(Vni(7)),
        Event::Update(remove),
    ];

    // Connecting.
    for msg in data {
        session.handle_message(msg, t0).unwrap();
    }
    assert_eq!(session.state(), State::Connecting);
    assert_eq!(events(&mut session), expected);
    assert_eq!(tx(&mut session), []);

    // HelloReceived.
    session.handle_message(hello(5, false), t0).unwrap();
    tx(&mut session);
    for msg in data {
        session.handle_message(msg, t0).unwrap();
    }
    assert_eq!(session.state(), State::HelloReceived);
    assert_eq!(events(&mut session), expected);
    assert_eq!(tx(&mut session), []);

    // Established, with a KEEPALIVE in the middle: events keep arrival order.
    session
        .handle_message(Message::Subscribe(Vni(1)), t0)
        .unwrap();
    session.handle_message(Message::Keepalive, t0).unwrap();
    session
        .handle_message(Message::Subscribe(Vni(2)), t0)
        .unwrap();
    assert_eq!(
        events(&mut session),
        [
            Event::Subscribe(Vni(1)),
            Event::Established { keepalive: s(5) },
            Event::Subscribe(Vni(2)),
        ]
    );
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    for msg in data {
        session.handle_message(msg, t0).unwrap();
    }
    assert_eq!(events(&mut session), expected);
    assert_eq!(tx(&mut session), []);
}

#[test]
fn server_handshake_timeout_without_hello_is_exact() {
    for (own, window) in [(0, ms(12500)), (5, ms(12500)), (2, ms(5000)), (1, ms(2500))] {
        let t0 = Instant::now();
        let mut session = Session::new(server_config(own), t0);
        assert_eq!(session.poll_timeout(), Some(t0 + window));
        session.handle_timeout(t0 + window - NS).unwrap();
        assert_eq!(session.state(), State::Connecting);
        let reason = CloseReason::HandshakeNoHello { waited: window };
        assert_eq!(session.handle_timeout(t0 + window), Err(reason.clone()));
        assert_eq!(reason.label(), "handshake_timeout_hello");
        assert_stays_closed(&mut session, &reason, t0 + window);
    }
}

#[test]
fn server_handshake_timeout_without_first_keepalive_is_exact() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    // The window runs from new(), not from the HELLO.
    session.handle_message(hello(1, false), t0 + s(10)).unwrap();
    assert_eq!(session.poll_timeout(), Some(t0 + ms(12500)));
    session.handle_timeout(t0 + ms(12500) - NS).unwrap();
    let reason = CloseReason::HandshakeNoKeepalive { waited: ms(12500) };
    assert_eq!(session.handle_timeout(t0 + ms(12500)), Err(reason.clone()));
    assert_eq!(reason.label(), "handshake_timeout_keepalive");
    assert_stays_closed(&mut session, &reason, t0 + ms(12500));
}

#[test]
fn server_handshake_window_uses_configured_not_negotiated_interval() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    session.handle_message(hello(1, false), t0 + s(1)).unwrap();
    // 2.5 x the negotiated 1 s after the HELLO has passed; the handshake
    // window (2.5 x the configured 5 s) has not.
    session.handle_timeout(t0 + s(12)).unwrap();
    session
        .handle_message(Message::Keepalive, t0 + s(12))
        .unwrap();
    assert!(session.is_established());
    assert_eq!(session.poll_timeout(), Some(t0 + s(12) + ms(2500)));
}

#[test]
fn server_keepalive_timeout_is_exact_and_reset_by_keepalives() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 5, 2); // negotiated 2 s -> 5 s timeout
    assert_eq!(session.poll_timeout(), Some(t0 + s(5)));
    session.handle_timeout(t0 + s(5) - NS).unwrap();
    // A KEEPALIVE just before the deadline moves it.
    session
        .handle_message(Message::Keepalive, t0 + s(4))
        .unwrap();
    assert_eq!(session.poll_timeout(), Some(t0 + s(9)));
    session.handle_timeout(t0 + s(5)).unwrap();
    session.handle_timeout(t0 + s(9) - NS).unwrap();
    assert!(session.is_established());
    let reason = CloseReason::KeepaliveTimeout { waited: s(5) };
    assert_eq!(session.handle_timeout(t0 + s(9)), Err(reason.clone()));
    assert_stays_closed(&mut session, &reason, t0 + s(9));
}

#[test]
fn server_keepalive_timeout_is_not_reset_by_other_traffic() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 1, 1); // 2.5 s timeout
    for i in 1..=24 {
        let now = t0 + ms(i * 100);
        session
            .handle_message(Message::Update(update(1, i as u8, Action::Add)), now)
            .unwrap();
        session
            .handle_message(Message::Subscribe(Vni(1)), now)
            .unwrap();
        session.handle_timeout(now).unwrap();
    }
    assert_eq!(session.poll_timeout(), Some(t0 + ms(2500)));
    assert_eq!(
        session.handle_timeout(t0 + ms(2500)),
        Err(CloseReason::KeepaliveTimeout { waited: ms(2500) })
    );
    // The updates not yet drained are dropped with the session.
    assert_eq!(session.poll_event(), None);
}

#[test]
fn late_keepalive_is_credited_if_handled_before_the_timer() {
    // Deadlines are only evaluated in handle_timeout, so input the shell
    // already read counts even when processed after the deadline.
    let t0 = Instant::now();
    let mut session = established_server(t0, 1, 1);
    session
        .handle_message(Message::Keepalive, t0 + ms(2600))
        .unwrap();
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    session.handle_timeout(t0 + ms(2600)).unwrap();
    assert_eq!(session.poll_timeout(), Some(t0 + ms(5100)));
}

#[test]
fn handle_timeout_before_the_deadline_does_nothing() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(5), t0);
    session.handle_timeout(t0).unwrap();
    // Time going backwards does not panic either.
    if let Some(earlier) = t0.checked_sub(ms(1)) {
        session.handle_timeout(earlier).unwrap();
    }
    assert_eq!(session.state(), State::Connecting);
    assert_eq!(session.poll_timeout(), Some(t0 + ms(12500)));
    assert_eq!(tx(&mut session), []);
}

#[test]
fn server_subscribe_and_unsubscribe_are_refused() {
    let t0 = Instant::now();
    let mut session = established_server(t0, 5, 5);
    assert!(!session.subscribe(Vni(1)));
    assert!(!session.unsubscribe(Vni(1)));
    assert!(!session.is_subscribed(Vni(1)));
    assert_eq!(tx(&mut session), []);
}

#[test]
fn huge_intervals_do_not_overflow() {
    let t0 = Instant::now();
    let mut session = Session::new(server_config(u32::MAX), t0);
    session.handle_message(hello(u32::MAX, false), t0).unwrap();
    session.handle_message(Message::Keepalive, t0).unwrap();
    assert!(session.is_established());
    session.handle_timeout(t0 + s(3600)).unwrap();

    let mut client = Session::new(client_config(u32::MAX), t0);
    client.handle_message(hello(u32::MAX, true), t0).unwrap();
    client.handle_message(Message::Keepalive, t0).unwrap();
    client.handle_timeout(t0 + s(3600)).unwrap();
    assert!(client.is_established());
}

// ---------------------------------------------------------------- client

#[test]
fn client_starts_by_queueing_its_hello() {
    for (own, sent) in [(0, 5), (5, 5), (3, 3), (60, 60)] {
        let t0 = Instant::now();
        let mut session = Session::new(client_config(own), t0);
        assert_eq!(session.role(), Role::Client);
        assert_eq!(session.state(), State::HelloSent);
        assert_eq!(session.keepalive(), None);
        assert_eq!(tx(&mut session), [hello(sent, false)]);
        assert_eq!(events(&mut session), []);
        let window = timeout_for(Duration::from_secs(u64::from(sent)));
        assert_eq!(session.poll_timeout(), Some(t0 + window));
    }
}

#[test]
fn client_sends_nothing_but_its_hello_before_the_servers_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    tx(&mut session);
    assert!(session.subscribe(Vni(1)));
    for step in 0..125 {
        session.handle_timeout(t0 + ms(step * 100)).unwrap();
        assert_eq!(tx(&mut session), []);
    }
}

#[test]
fn client_negotiates_the_minimum_in_both_directions() {
    // (own configured, server's HELLO, expected)
    let cases: [(u32, u32, u32); 6] = [
        (5, 3, 3),
        (3, 5, 3),
        (5, 5, 5),
        (0, 7, 5),
        (0, 2, 2),
        (10, u32::MAX, 10),
    ];
    for (own, server, expected) in cases {
        let t0 = Instant::now();
        let mut session = Session::new(client_config(own), t0);
        tx(&mut session);
        session.handle_message(hello(server, true), t0).unwrap();
        let expected = Duration::from_secs(u64::from(expected));
        assert_eq!(
            session.keepalive(),
            Some(expected),
            "own {own} server {server}"
        );
        assert_eq!(session.state(), State::HelloReceived);
        // One KEEPALIVE at once, the next one an interval later.
        assert_eq!(tx(&mut session), [Message::Keepalive]);
        assert_eq!(events(&mut session), []);
        session.handle_timeout(t0 + expected - NS).unwrap();
        assert_eq!(tx(&mut session), []);
    }
}

#[test]
fn client_ignores_is_server_in_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    tx(&mut session);
    session.handle_message(hello(5, false), t0).unwrap();
    assert_eq!(session.state(), State::HelloReceived);
}

#[test]
fn client_closes_on_hello_with_zero_interval() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    assert_eq!(
        session.handle_message(hello(0, true), t0),
        Err(CloseReason::ZeroKeepaliveInterval)
    );
    assert_stays_closed(&mut session, &CloseReason::ZeroKeepaliveInterval, t0);
}

#[test]
fn client_closes_on_keepalive_before_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    assert_eq!(
        session.handle_message(Message::Keepalive, t0),
        Err(CloseReason::KeepaliveBeforeHello)
    );
    // The HELLO still queued is dropped with the session.
    assert_stays_closed(&mut session, &CloseReason::KeepaliveBeforeHello, t0);
}

#[test]
fn client_closes_on_second_hello() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    session.handle_message(hello(5, true), t0).unwrap();
    assert_eq!(
        session.handle_message(hello(5, true), t0),
        Err(CloseReason::DuplicateHello)
    );
    assert_stays_closed(&mut session, &CloseReason::DuplicateHello, t0);

    let mut session = established_client(t0, 5, 5);
    assert_eq!(
        session.handle_message(hello(5, true), t0 + s(1)),
        Err(CloseReason::DuplicateHello)
    );
    assert_stays_closed(&mut session, &CloseReason::DuplicateHello, t0 + s(1));
}

#[test]
fn client_servers_keepalive_establishes() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    session.handle_message(hello(2, true), t0 + s(1)).unwrap();
    assert_eq!(tx(&mut session), [hello(5, false), Message::Keepalive]);
    session
        .handle_message(Message::Keepalive, t0 + s(2))
        .unwrap();
    assert_eq!(session.state(), State::Established);
    assert_eq!(
        events(&mut session),
        [Event::Established { keepalive: s(2) }]
    );
    // The client does not answer KEEPALIVEs; it keeps its own cadence.
    assert_eq!(tx(&mut session), []);
    session
        .handle_message(Message::Keepalive, t0 + s(2))
        .unwrap();
    assert_eq!(tx(&mut session), []);
    assert_eq!(events(&mut session), []);
    // Next deadline: its own KEEPALIVE at hello + 2 s, before the receive timeout.
    assert_eq!(session.poll_timeout(), Some(t0 + s(3)));
}

#[test]
fn client_keepalive_cadence_over_several_intervals() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    tx(&mut session);
    let hello_at = t0 + ms(300);
    session.handle_message(hello(2, true), hello_at).unwrap();
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    session
        .handle_message(Message::Keepalive, hello_at + ms(10))
        .unwrap();
    events(&mut session);

    for k in 1..=10u32 {
        let due = hello_at + s(2) * k;
        assert_eq!(session.poll_timeout(), Some(due), "interval {k}");
        session.handle_timeout(due - NS).unwrap();
        assert_eq!(tx(&mut session), [], "early at interval {k}");
        session.handle_timeout(due).unwrap();
        assert_eq!(tx(&mut session), [Message::Keepalive], "interval {k}");
        // A second call at the same instant sends nothing more.
        session.handle_timeout(due).unwrap();
        assert_eq!(tx(&mut session), []);
        // The server's echo keeps the session alive.
        session
            .handle_message(Message::Keepalive, due + ms(5))
            .unwrap();
    }
    assert!(session.is_established());
}

#[test]
fn client_keepalives_run_during_the_handshake() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    tx(&mut session);
    session.handle_message(hello(1, true), t0).unwrap();
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    for k in 1..=12u32 {
        session.handle_timeout(t0 + s(1) * k).unwrap();
        assert_eq!(tx(&mut session), [Message::Keepalive]);
    }
    assert_eq!(session.state(), State::HelloReceived);
    assert_eq!(session.poll_timeout(), Some(t0 + ms(12500)));
}

#[test]
fn client_late_timer_sends_one_keepalive_not_a_burst() {
    let t0 = Instant::now();
    let mut session = established_client(t0, 1, 1);
    assert_eq!(session.poll_timeout(), Some(t0 + s(1)));
    // Half an interval late: one KEEPALIVE, cadence kept.
    session.handle_timeout(t0 + ms(1500)).unwrap();
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    assert_eq!(session.poll_timeout(), Some(t0 + s(2)));
    session
        .handle_message(Message::Keepalive, t0 + ms(1500))
        .unwrap();
    // Stalled past several intervals: still one, and the next a full interval on.
    session.handle_timeout(t0 + ms(3900)).unwrap();
    assert_eq!(tx(&mut session), [Message::Keepalive]);
    assert_eq!(session.poll_timeout(), Some(t0 + ms(4000)));
}

#[test]
fn client_handshake_timeouts_are_exact() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(2), t0);
    session.handle_timeout(t0 + s(5) - NS).unwrap();
    let reason = CloseReason::HandshakeNoHello { waited: s(5) };
    assert_eq!(session.handle_timeout(t0 + s(5)), Err(reason.clone()));
    assert_stays_closed(&mut session, &reason, t0 + s(5));

    let mut session = Session::new(client_config(2), t0);
    session.handle_message(hello(1, true), t0 + s(4)).unwrap();
    session.handle_timeout(t0 + s(5) - NS).unwrap();
    let reason = CloseReason::HandshakeNoKeepalive { waited: s(5) };
    assert_eq!(session.handle_timeout(t0 + s(5)), Err(reason.clone()));
    assert_stays_closed(&mut session, &reason, t0 + s(5));
}

#[test]
fn client_keepalive_timeout_is_exact_and_not_reset_by_its_own_keepalives() {
    let t0 = Instant::now();
    let mut session = established_client(t0, 5, 2); // 5 s timeout
    let mut sent = 0;
    let mut now = t0;
    while now < t0 + s(5) - ms(100) {
        now += ms(100);
        session.handle_timeout(now).unwrap();
        sent += tx(&mut session).len();
        session
            .handle_message(Message::Update(update(1, 1, Action::Add)), now)
            .unwrap();
    }
    assert_eq!(sent, 2, "keepalives at 2 s and 4 s");
    session.handle_timeout(t0 + s(5) - NS).unwrap();
    assert!(session.is_established());
    let reason = CloseReason::KeepaliveTimeout { waited: s(5) };
    assert_eq!(session.handle_timeout(t0 + s(5)), Err(reason.clone()));
    assert_stays_closed(&mut session, &reason, t0 + s(5));
}

#[test]
fn client_accepts_data_before_established() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    let add = update(9, 1, Action::Add);
    session.handle_message(Message::Update(add), t0).unwrap();
    session.handle_message(hello(5, true), t0).unwrap();
    session.handle_message(Message::Update(add), t0).unwrap();
    assert_eq!(
        events(&mut session),
        [Event::Update(add), Event::Update(add)]
    );
}

#[test]
fn client_subscriptions_wait_for_established_then_go_out_in_order() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    assert!(session.subscribe(Vni(30)));
    assert!(session.subscribe(Vni(10)));
    assert!(!session.subscribe(Vni(30)), "duplicate");
    assert!(session.subscribe(Vni(20)));
    assert!(session.is_subscribed(Vni(10)));
    assert_eq!(
        session.subscriptions().collect::<Vec<_>>(),
        [Vni(30), Vni(10), Vni(20)]
    );
    assert_eq!(tx(&mut session), [hello(5, false)]);

    session.handle_message(hello(5, true), t0).unwrap();
    assert!(!session.subscribe(Vni(10)));
    assert_eq!(tx(&mut session), [Message::Keepalive]);

    session.handle_message(Message::Keepalive, t0).unwrap();
    assert_eq!(
        events(&mut session),
        [Event::Established { keepalive: s(5) }]
    );
    assert_eq!(
        tx(&mut session),
        [
            Message::Subscribe(Vni(30)),
            Message::Subscribe(Vni(10)),
            Message::Subscribe(Vni(20)),
        ]
    );
    // Further KEEPALIVEs do not re-send them.
    session
        .handle_message(Message::Keepalive, t0 + s(1))
        .unwrap();
    assert_eq!(tx(&mut session), []);
}

#[test]
fn client_subscribe_when_established_is_sent_once_at_once() {
    let t0 = Instant::now();
    let mut session = established_client(t0, 5, 5);
    assert!(session.subscribe(Vni(1)));
    assert!(session.subscribe(Vni(2)));
    assert!(!session.subscribe(Vni(1)));
    assert_eq!(
        tx(&mut session),
        [Message::Subscribe(Vni(1)), Message::Subscribe(Vni(2))]
    );
    assert!(!session.subscribe(Vni(2)));
    assert_eq!(tx(&mut session), []);
}

#[test]
fn client_unsubscribe_before_established_just_forgets() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    tx(&mut session);
    assert!(session.subscribe(Vni(1)));
    assert!(session.subscribe(Vni(2)));
    assert!(session.unsubscribe(Vni(1)));
    assert!(!session.unsubscribe(Vni(1)));
    assert!(!session.unsubscribe(Vni(99)));
    assert!(!session.is_subscribed(Vni(1)));
    assert_eq!(tx(&mut session), []);
    session.handle_message(hello(5, true), t0).unwrap();
    session.handle_message(Message::Keepalive, t0).unwrap();
    assert_eq!(
        tx(&mut session),
        [Message::Keepalive, Message::Subscribe(Vni(2))]
    );
}

#[test]
fn client_unsubscribe_when_established_sends_unsubscribe() {
    let t0 = Instant::now();
    let mut session = established_client(t0, 5, 5);
    assert!(session.subscribe(Vni(1)));
    assert!(session.unsubscribe(Vni(1)));
    assert!(!session.unsubscribe(Vni(1)));
    assert_eq!(
        tx(&mut session),
        [Message::Subscribe(Vni(1)), Message::Unsubscribe(Vni(1))]
    );
    // Subscribing again after the UNSUBSCRIBE is a new subscription.
    assert!(session.subscribe(Vni(1)));
    assert_eq!(tx(&mut session), [Message::Subscribe(Vni(1))]);
    assert_eq!(session.subscriptions().collect::<Vec<_>>(), [Vni(1)]);
}

#[test]
fn client_subscriptions_made_before_establishment_are_not_unsubscribed_unsent() {
    let t0 = Instant::now();
    let mut session = Session::new(client_config(5), t0);
    assert!(session.subscribe(Vni(5)));
    session.handle_message(hello(5, true), t0).unwrap();
    assert!(session.unsubscribe(Vni(5)));
    session.handle_message(Message::Keepalive, t0).unwrap();
    assert_eq!(tx(&mut session), [hello(5, false), Message::Keepalive]);
}

#[test]
fn client_closed_session_refuses_subscriptions() {
    let t0 = Instant::now();
    let mut session = established_client(t0, 5, 5);
    assert!(session.subscribe(Vni(1)));
    assert!(session.handle_message(hello(5, true), t0).is_err());
    assert!(!session.subscribe(Vni(2)));
    assert!(!session.unsubscribe(Vni(1)));
    assert_stays_closed(&mut session, &CloseReason::DuplicateHello, t0);
}

// ---------------------------------------------------------------- properties

#[derive(Clone, Debug)]
enum Input {
    Msg(Message),
    Advance(Duration),
    Subscribe(Vni),
    Unsubscribe(Vni),
}

fn message_strategy() -> impl Strategy<Value = Message> {
    let secs = prop_oneof![Just(0u32), 1u32..8, Just(u32::MAX)];
    prop_oneof![
        1 => (secs, any::<bool>()).prop_map(|(keepalive_secs, is_server)| {
            Message::Hello(Hello {
                keepalive_secs,
                is_server,
                extensions: 0,
            })
        }),
        4 => Just(Message::Keepalive),
        1 => (0u32..4).prop_map(|v| Message::Subscribe(Vni(v))),
        1 => (0u32..4).prop_map(|v| Message::Unsubscribe(Vni(v))),
        1 => (0u32..4, any::<u8>(), any::<bool>()).prop_map(|(v, o, add)| {
            let action = if add { Action::Add } else { Action::Remove };
            Message::Update(update(v, o, action))
        }),
    ]
}

fn input_strategy() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => message_strategy().prop_map(Input::Msg),
        3 => (0u64..20_000).prop_map(|n| Input::Advance(ms(n))),
        1 => (0u32..4).prop_map(|v| Input::Subscribe(Vni(v))),
        1 => (0u32..4).prop_map(|v| Input::Unsubscribe(Vni(v))),
    ]
}

fn expected_event(msg: &Message) -> Option<Event> {
    match *msg {
        Message::Subscribe(v) => Some(Event::Subscribe(v)),
        Message::Unsubscribe(v) => Some(Event::Unsubscribe(v)),
        Message::Update(u) => Some(Event::Update(u)),
        Message::Hello(_) | Message::Keepalive | Message::Sync(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn server_invariants(
        own in prop_oneof![Just(0u32), 1u32..8],
        inputs in proptest::collection::vec(input_strategy(), 0..60),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut session = Session::new(server_config(own), t0);
        prop_assert!(tx(&mut session).is_empty());
        let mut hello_seen = false;
        let mut hellos_sent = 0;
        let mut closed: Option<CloseReason> = None;
        let mut established_events = 0;

        for input in inputs {
            let result = match &input {
                Input::Msg(msg) => session.handle_message(*msg, now),
                Input::Advance(d) => {
                    now += *d;
                    session.handle_timeout(now)
                }
                Input::Subscribe(v) => {
                    prop_assert!(!session.subscribe(*v));
                    Ok(())
                }
                Input::Unsubscribe(v) => {
                    prop_assert!(!session.unsubscribe(*v));
                    Ok(())
                }
            };
            let sent = tx(&mut session);
            let evs = events(&mut session);

            if let Some(reason) = &closed {
                // Closed stays closed, with the same reason, silently.
                if !matches!(input, Input::Subscribe(_) | Input::Unsubscribe(_)) {
                    prop_assert_eq!(&result, &Err(reason.clone()));
                }
                prop_assert!(sent.is_empty());
                prop_assert!(evs.is_empty());
                prop_assert_eq!(session.state(), State::Closed);
                prop_assert_eq!(session.poll_timeout(), None);
                continue;
            }
            if let Err(reason) = &result {
                prop_assert!(sent.is_empty());
                prop_assert!(evs.is_empty());
                prop_assert_eq!(session.state(), State::Closed);
                prop_assert_eq!(session.close_reason(), Some(reason));
                closed = Some(reason.clone());
                continue;
            }

            // Nothing at all is sent before the client's HELLO.
            if !hello_seen && !matches!(input, Input::Msg(Message::Hello(_))) {
                prop_assert!(sent.is_empty(), "sent {:?} before HELLO", sent);
            }
            match &input {
                Input::Msg(Message::Hello(h)) => {
                    prop_assert!(!hello_seen, "second HELLO accepted");
                    hello_seen = true;
                    let own = if own == 0 { 5 } else { own };
                    prop_assert_eq!(
                        &sent,
                        &vec![hello(h.keepalive_secs.min(own), true)]
                    );
                    prop_assert!(evs.is_empty());
                }
                Input::Msg(Message::Keepalive) => {
                    // The only KEEPALIVE a server sends is the echo of this one.
                    prop_assert_eq!(&sent, &vec![Message::Keepalive]);
                    prop_assert!(session.is_established());
                    for ev in &evs {
                        prop_assert!(matches!(ev, Event::Established { .. }), "{:?}", ev);
                    }
                    established_events += evs.len();
                }
                Input::Msg(msg) => {
                    prop_assert!(sent.is_empty());
                    prop_assert_eq!(evs, expected_event(msg).into_iter().collect::<Vec<_>>());
                }
                // The server never originates anything from a timer or a local call.
                Input::Advance(_) | Input::Subscribe(_) | Input::Unsubscribe(_) => {
                    prop_assert!(sent.is_empty(), "server originated {:?}", sent);
                    prop_assert!(evs.is_empty());
                }
            }
            hellos_sent += sent
                .iter()
                .filter(|m| matches!(m, Message::Hello(_)))
                .count();
            prop_assert!(hellos_sent <= 1);
            prop_assert!(established_events <= 1);
            prop_assert_eq!(session.is_established(), established_events == 1);
            prop_assert!(session.poll_timeout().is_some_and(|t| t > now));
        }
    }

    #[test]
    fn client_invariants(
        own in prop_oneof![Just(0u32), 1u32..8],
        inputs in proptest::collection::vec(input_strategy(), 0..60),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut session = Session::new(client_config(own), t0);
        let own = if own == 0 { 5 } else { own };
        prop_assert_eq!(tx(&mut session), vec![hello(own, false)]);
        let mut hello_seen = false;
        let mut closed = false;
        // What the server has been told: VNIs with a SUBSCRIBE and no UNSUBSCRIBE since.
        let mut active: HashSet<Vni> = HashSet::new();

        for input in inputs {
            let was_established = session.is_established();
            let result = match &input {
                Input::Msg(msg) => session.handle_message(*msg, now),
                Input::Advance(d) => {
                    now += *d;
                    session.handle_timeout(now)
                }
                Input::Subscribe(v) => {
                    let fresh = !session.is_subscribed(*v) && !closed;
                    prop_assert_eq!(session.subscribe(*v), fresh);
                    Ok(())
                }
                Input::Unsubscribe(v) => {
                    let known = session.is_subscribed(*v) && !closed;
                    prop_assert_eq!(session.unsubscribe(*v), known);
                    Ok(())
                }
            };
            let sent = tx(&mut session);
            events(&mut session);
            if closed || result.is_err() {
                closed = true;
                prop_assert!(sent.is_empty());
                prop_assert_eq!(session.state(), State::Closed);
                continue;
            }
            if let Input::Msg(Message::Hello(_)) = input {
                hello_seen = true;
            }
            for msg in &sent {
                match msg {
                    Message::Hello(_) => prop_assert!(false, "second HELLO sent"),
                    Message::Keepalive => {
                        prop_assert!(hello_seen, "KEEPALIVE before the server's HELLO");
                    }
                    Message::Subscribe(v) => {
                        prop_assert!(session.is_established());
                        prop_assert!(active.insert(*v), "SUBSCRIBE {:?} sent twice", v);
                    }
                    Message::Unsubscribe(v) => {
                        prop_assert!(was_established);
                        prop_assert!(active.remove(v), "UNSUBSCRIBE {:?} never subscribed", v);
                    }
                    Message::Update(_) => prop_assert!(false, "session sent an UPDATE"),
                    Message::Sync(_) => prop_assert!(false, "session sent a SYNC"),
                }
            }
            if session.is_established() {
                let subscribed: HashSet<Vni> = session.subscriptions().collect();
                prop_assert_eq!(&subscribed, &active);
            } else {
                prop_assert!(active.is_empty());
            }
            prop_assert!(session.poll_timeout().is_some_and(|t| t > now));
        }
    }
}

// ---------------------------------------------------------------------------
// Negotiated extensions (PROTOCOL.md section 8)
// ---------------------------------------------------------------------------

fn with_ext(mut config: Config, bits: u64) -> Config {
    config.extensions = Extensions(bits);
    config
}

fn hello_ext(keepalive_secs: u32, is_server: bool, extensions: u64) -> Message {
    Message::Hello(Hello {
        keepalive_secs,
        is_server,
        extensions,
    })
}

#[test]
fn client_offers_its_extensions_and_a_plain_client_offers_none() {
    let t0 = Instant::now();
    let mut offering = Session::new(with_ext(client_config(5), 1), t0);
    assert_eq!(tx(&mut offering), vec![hello_ext(5, false, 1)]);
    let mut plain = Session::new(client_config(5), t0);
    assert_eq!(tx(&mut plain), vec![hello(5, false)]);
}

#[test]
fn server_answers_the_intersection_and_reports_it() {
    let t0 = Instant::now();
    // Offer: SYNC and an unknown bit 5; the server supports SYNC only.
    let mut s = Session::new(with_ext(server_config(5), 1), t0);
    s.handle_message(hello_ext(5, false, 1 | 1 << 5), t0)
        .unwrap();
    assert_eq!(tx(&mut s), vec![hello_ext(5, true, 1)]);
    assert_eq!(events(&mut s), vec![Event::Negotiated(Extensions::SYNC)]);
    assert_eq!(s.extensions(), Extensions::SYNC);
    // The server never receives extension messages.
    assert_eq!(s.accepted_extensions(), Extensions::NONE);
}

#[test]
fn server_with_a_reference_client_negotiates_nothing_and_says_nothing_new() {
    let t0 = Instant::now();
    let mut s = Session::new(with_ext(server_config(5), 1), t0);
    s.handle_message(hello(5, false), t0).unwrap();
    // Byte-for-byte the HELLO of a server without extensions.
    assert_eq!(tx(&mut s), vec![hello(5, true)]);
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.extensions(), Extensions::NONE);
    // A server that supports nothing answers nothing to an offer.
    let mut s = Session::new(server_config(5), t0);
    s.handle_message(hello_ext(5, false, 1), t0).unwrap();
    assert_eq!(tx(&mut s), vec![hello(5, true)]);
}

#[test]
fn client_keeps_only_bits_it_offered() {
    let t0 = Instant::now();
    let mut c = Session::new(with_ext(client_config(5), 1), t0);
    tx(&mut c);
    c.handle_message(hello_ext(5, true, 1 | 1 << 7), t0)
        .unwrap();
    assert_eq!(c.extensions(), Extensions::SYNC);
    assert_eq!(c.accepted_extensions(), Extensions::SYNC);
    assert_eq!(events(&mut c), vec![Event::Negotiated(Extensions::SYNC)]);
    // A client that offered nothing trusts nothing the server claims.
    let mut c = Session::new(client_config(5), t0);
    c.handle_message(hello_ext(5, true, 1), t0).unwrap();
    assert_eq!(c.extensions(), Extensions::NONE);
    assert_eq!(c.accepted_extensions(), Extensions::NONE);
    assert_eq!(events(&mut c), vec![]);
}

#[test]
fn sync_is_an_event_only_where_negotiated() {
    let t0 = Instant::now();
    let mut c = Session::new(with_ext(client_config(5), 1), t0);
    c.handle_message(hello_ext(5, true, 1), t0).unwrap();
    c.handle_message(Message::Keepalive, t0).unwrap();
    events(&mut c);
    c.handle_message(Message::Sync(Vni(7)), t0).unwrap();
    assert_eq!(events(&mut c), vec![Event::Sync(Vni(7))]);

    // Not negotiated (the server answered without the bit): ignored.
    let mut c = Session::new(with_ext(client_config(5), 1), t0);
    c.handle_message(hello(5, true), t0).unwrap();
    c.handle_message(Message::Keepalive, t0).unwrap();
    events(&mut c);
    c.handle_message(Message::Sync(Vni(7)), t0).unwrap();
    assert_eq!(events(&mut c), vec![]);
    assert!(c.is_established());

    // A server ignores a SYNC, negotiated or not.
    let mut s = Session::new(with_ext(server_config(5), 1), t0);
    s.handle_message(hello_ext(5, false, 1), t0).unwrap();
    events(&mut s);
    s.handle_message(Message::Sync(Vni(7)), t0).unwrap();
    assert_eq!(events(&mut s), vec![]);
}
