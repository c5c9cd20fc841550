//! Deterministic pseudo-random mutations of valid messages: sealed ones through the receiver
//! (every mutant refused, nothing moves), plaintext bodies through the decoder (no panic; what
//! decodes re-encodes to the same bytes).

mod common;

use common::*;
use ha::*;

const MUTATIONS: usize = 20_000;

fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            0 | 1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            3 => v.truncate(rng.below(v.len() + 1)),
            4 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                v.splice(i..i, (0..n).map(|_| rng.next() as u8));
            }
            5 if v.len() >= 4 => {
                // Overwrite a 32-bit field at a random offset with an edge value.
                let i = rng.below(v.len() - 3);
                let edge = [0u32, 1, 0x7fff_ffff, u32::MAX, 64, 65, 128, 129][rng.below(8)];
                v[i..i + 4].copy_from_slice(&edge.to_be_bytes());
            }
            6 => {
                // Splice in the head or tail of another message.
                let o = &others[rng.below(others.len())];
                let n = rng.below(o.len() + 1);
                if rng.below(2) == 0 {
                    let n = n.min(v.len());
                    v[..n].copy_from_slice(&o[..n]);
                } else {
                    v.extend_from_slice(&o[o.len() - n..]);
                }
            }
            _ if !v.is_empty() => {
                // Duplicate or remove a range.
                let a = rng.below(v.len());
                let b = a + rng.below(v.len() - a + 1);
                if rng.below(2) == 0 {
                    let copy = v[a..b].to_vec();
                    v.splice(b..b, copy);
                } else {
                    v.drain(a..b);
                }
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

fn corpus() -> Vec<Message> {
    let mut c = every_message();
    c.retain(|m| !matches!(m, Message::Snapshot(s) if s.ike.len() > 1));
    c.push(Message::Snapshot(snapshot(2, 1)));
    c
}

#[test]
fn mutated_sealed_messages_are_refused() {
    let (mut tx, _) = pair();
    let sealed: Vec<Vec<u8>> = corpus().iter().map(|m| tx.seal(m).unwrap()).collect();
    // A receiver that has accepted nothing: any mutant it accepted would move it.
    let mut rx = Receiver::new(&backup_config());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut refused = 0;
    for _ in 0..MUTATIONS {
        let original = &sealed[rng.below(sealed.len())];
        let m = mutate(&mut rng, original, &sealed);
        if &m == original {
            continue;
        }
        assert!(rx.open(&m).is_err());
        refused += 1;
        assert_eq!(rx.position(), None);
    }
    assert!(refused > MUTATIONS * 9 / 10);
    assert_eq!(rx.counters().refused_total(), refused as u64);
    assert_eq!(rx.counters().accepted, 0);
    // Mutants mostly fail the tag; the cheap checks catch the rest.
    assert!(rx.counters().refused(RefusalKind::Auth) > 0);
    assert!(rx.counters().refused(RefusalKind::LengthMismatch) > 0);
    // The genuine messages still open, in order.
    for s in &sealed {
        assert!(rx.open(s).is_ok());
    }
}

#[test]
fn mutated_bodies_decode_canonically_or_not_at_all() {
    let bodies: Vec<(MessageType, Vec<u8>)> = corpus()
        .iter()
        .map(|m| (m.message_type(), encode_body(m).unwrap().to_vec()))
        .collect();
    let others: Vec<Vec<u8>> = bodies.iter().map(|b| b.1.clone()).collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut decoded = 0;
    for _ in 0..MUTATIONS {
        let (t, body) = &bodies[rng.below(bodies.len())];
        // Sometimes decode under another type.
        let t = if rng.below(8) == 0 {
            MessageType::ALL[rng.below(MessageType::ALL.len())]
        } else {
            *t
        };
        let m = mutate(&mut rng, body, &others);
        match decode_body(t, &m) {
            Ok(msg) => {
                decoded += 1;
                assert_eq!(msg.message_type(), t);
                assert_eq!(&encode_body(&msg).unwrap()[..], &m[..], "not canonical");
            }
            Err(e) => assert!(e.offset <= m.len(), "{e}"),
        }
    }
    // Some mutants (a changed key byte, port, counter) still decode.
    assert!(decoded > 100, "{decoded}");
}
