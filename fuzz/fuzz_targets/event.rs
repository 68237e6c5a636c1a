//! Fuzzes the event reader (SPEC §2): a positional argument, Consul event lists,
//! Serf user events and plain lines on stdin.
//!
//! Input: byte 0 chooses the environment, the rest is stdin (or, with bit 3, the
//! positional argument):
//!   bits 0-1  0: no event env   1: CONSUL_INDEX=7   2: SERF_EVENT=user   3: SERF_EVENT=member-join
//!   bit  2    SERF_USER_EVENT=deploy and SERF_USER_LTIME=<bytes 1..4 as digits>
//!   bit  3    the rest (lossy UTF-8) is the positional argument instead of stdin
//!   bit  4    stdin is fed one byte per read() call (exercises the line reader's loop)
//! Must never panic; errors must format; a produced event must describe itself, a
//! rollout wave in a serf payload must write back to a payload that reads the same, and
//! its URL given back to `to_url` is the same URL (up to surrounding white space).
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

/// A reader that hands out at most one byte per call.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.0.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let ltime: String = rest.iter().take(4).map(|b| format!("{b}")).collect();
    let env = move |name: &str| -> Option<String> {
        match name {
            "CONSUL_INDEX" if flags & 3 == 1 => Some("7".into()),
            "SERF_EVENT" if flags & 3 == 2 => Some("user".into()),
            "SERF_EVENT" if flags & 3 == 3 => Some("member-join".into()),
            "SERF_USER_EVENT" if flags & 4 != 0 => Some("deploy".into()),
            "SERF_USER_LTIME" if flags & 4 != 0 => Some(ltime.clone()),
            _ => None,
        }
    };
    let positional = (flags & 8 != 0).then(|| String::from_utf8_lossy(rest).into_owned());
    let result = if flags & 16 != 0 {
        stretcher::event::read(positional.as_deref(), &env, &mut Trickle(rest))
    } else {
        stretcher::event::read(positional.as_deref(), &env, &mut &rest[..])
    };
    match result {
        Ok(ev) => {
            let _ = ev.describe();
            let _ = ev.replay_key();
            // A rollout wave read from a payload is written back to one that reads
            // the same (SPEC §19).
            if let Some(wave) = &ev.wave {
                let text = stretcher::rollout::format_payload("u", wave)
                    .expect("a wave that was read can be written");
                let (_, again) = stretcher::rollout::parse_payload(&text)
                    .expect("a written wave reads back")
                    .expect("as a wave");
                assert_eq!(&again, wave);
            }
            // The URL it produced must itself be accepted as an argument.
            // The URL it produced is stable: as an argument it is the same URL, up to
            // surrounding white space (a path `a //` is the file `a `, whose URL ends in
            // a space that an argument would lose to trimming).
            match stretcher::event::to_url(&ev.url) {
                Ok(again) => assert_eq!(again, ev.url.trim()),
                Err(e) => panic!("to_url rejects its own output {:?}: {e}", ev.url),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    stretcher::log::reset();
});
