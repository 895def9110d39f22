//! The final check: every subscriber holds every accepted id of its topics
//! exactly once, in order, or an explicit gap covering ids Redis really
//! lost; and the figures of the run, per transport.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use rtgate::core::MessageId;

use crate::subs::{Sub, Transport};

/// Violations and figures of one transport (or of all).
#[derive(Default, Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) subscribers: usize,
    pub(crate) slow: usize,
    /// Messages received (all subscribers, all topics).
    pub(crate) received: u64,
    pub(crate) reconnects: u64,
    /// Closes as slow_consumer, counted in the gateways' logs.
    pub(crate) slow_closes: u64,
    /// Gaps reported by the server (distinct per subscriber).
    pub(crate) gaps: u64,
    /// Accepted ids missing with no gap covering them: silent loss.
    pub(crate) lost: u64,
    /// Accepted ids missing under a gap although Redis still holds them.
    pub(crate) spurious_gap: u64,
    /// Accepted ids missing under a gap, and gone from Redis too.
    pub(crate) redis_lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    /// Received ids no publish was answered with (unconfirmed publishes).
    pub(crate) extra: u64,
    pub(crate) garbled: u64,
    /// Why sessions ended, by reason.
    pub(crate) ends: BTreeMap<String, u64>,
}

impl Figures {
    pub(crate) fn ok(&self) -> bool {
        self.lost == 0
            && self.spurious_gap == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.garbled == 0
    }

    fn add(&mut self, o: &Figures) {
        self.subscribers += o.subscribers;
        self.slow += o.slow;
        self.received += o.received;
        self.reconnects += o.reconnects;
        self.slow_closes += o.slow_closes;
        self.gaps += o.gaps;
        self.lost += o.lost;
        self.spurious_gap += o.spurious_gap;
        self.redis_lost += o.redis_lost;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.extra += o.extra;
        self.garbled += o.garbled;
        for (k, v) in &o.ends {
            *self.ends.entry(k.clone()).or_default() += v;
        }
    }
}

/// Checks every subscriber against `accepted` (ids per topic, sorted) and
/// `stored` (ids Redis still holds per topic at the end). Returns the
/// figures per transport and the first violations, described.
pub(crate) fn check(
    subs: &[std::sync::Arc<Sub>],
    accepted: &HashMap<String, Vec<MessageId>>,
    stored: &HashMap<String, HashSet<MessageId>>,
) -> (BTreeMap<Transport, Figures>, Vec<String>) {
    let mut per: BTreeMap<Transport, Figures> = BTreeMap::new();
    let mut problems = Vec::new();
    let empty = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        let f = per.entry(sub.transport).or_default();
        let seen = sub.seen.lock();
        f.subscribers += 1;
        f.slow += usize::from(sub.slow);
        f.reconnects += seen.reconnects;
        f.gaps += seen.gaps.len() as u64;
        f.garbled += seen.garbled;
        for (k, v) in &seen.ends {
            *f.ends.entry(k.clone()).or_default() += v;
        }
        let who = format!("{} subscriber {i}{}", sub.transport.name(), if sub.slow { " (slow)" } else { "" });
        for topic in &sub.topics {
            let want = accepted.get(topic).unwrap_or(&empty);
            let got = seen.ids.get(topic).unwrap_or(&empty);
            f.received += got.len() as u64;
            let want_set: HashSet<MessageId> = want.iter().copied().collect();
            let mut got_set = HashSet::new();
            let mut prev: Option<MessageId> = None;
            for &id in got {
                if !got_set.insert(id) {
                    f.duplicates += 1;
                    note(&mut problems, format!("{who}: {topic} {id} received twice"));
                } else if prev.is_some_and(|p| id < p) {
                    f.out_of_order += 1;
                    note(&mut problems, format!("{who}: {topic} {id} after {}", prev.unwrap_or_default()));
                }
                if !want_set.contains(&id) {
                    f.extra += 1;
                }
                prev = Some(prev.map_or(id, |p| p.max(id)));
            }
            let in_redis = stored.get(topic);
            let mut missing_run: Vec<MessageId> = Vec::new();
            for &id in want.iter().filter(|id| !got_set.contains(id)) {
                let gapped = seen.gaps.iter().any(|g| &g.topic == topic && g.after < id && id < g.oldest);
                let still_stored = in_redis.is_some_and(|s| s.contains(&id));
                match (gapped, still_stored) {
                    (false, _) => {
                        f.lost += 1;
                        missing_run.push(id);
                    }
                    (true, true) => {
                        f.spurious_gap += 1;
                        note(&mut problems, format!("{who}: {topic} {id} under a gap but still in Redis"));
                    }
                    (true, false) => f.redis_lost += 1,
                }
            }
            if !missing_run.is_empty() {
                let first = missing_run[0];
                let last = missing_run[missing_run.len() - 1];
                let got_last = got.last().map(|i| i.to_string()).unwrap_or_else(|| "nothing".into());
                note(
                    &mut problems,
                    format!(
                        "{who}: {topic} lost {} accepted ids with no gap ({first} .. {last}); last received {got_last}; \
                         ends {:?}",
                        missing_run.len(),
                        seen.ends
                    ),
                );
            }
        }
    }
    (per, problems)
}

fn note(problems: &mut Vec<String>, p: String) {
    if problems.len() < 40 {
        problems.push(p);
    }
}

/// The figures as a Markdown table (per transport, then all).
pub(crate) fn table(per: &BTreeMap<Transport, Figures>) -> (String, Figures) {
    let mut out = String::from(
        "| transport | subscribers (slow) | messages received | reconnects | slow_consumer closes | gaps | lost | dup | disorder | redis lost |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut all = Figures::default();
    let row = |out: &mut String, name: &str, f: &Figures| {
        let _ = writeln!(
            out,
            "| {name} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.subscribers,
            f.slow,
            f.received,
            f.reconnects,
            f.slow_closes,
            f.gaps,
            f.lost + f.spurious_gap,
            f.duplicates,
            f.out_of_order,
            f.redis_lost
        );
    };
    for t in Transport::ALL {
        if let Some(f) = per.get(&t) {
            row(&mut out, t.name(), f);
            all.add(f);
        }
    }
    row(&mut out, "all", &all);
    (out, all)
}
