//! One upstream lookup per name and type at a time.
//!
//! When a class is told to open a new site, thirty devices ask for it within the same
//! millisecond. The first query to miss the cache leads and asks upstream; the others follow:
//! they wait for the leader and answer from what it put in the cache. So a burst costs one
//! upstream query, and someone forging answers gets one query to race, not thirty (RFC 5452
//! section 5).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

type Key = (Box<str>, u16);

/// The lookups on their way upstream.
#[derive(Default)]
pub struct InFlight {
    pending: Mutex<HashMap<Key, watch::Receiver<Option<bool>>>>,
}

/// A query's part in the lookup of its name.
pub enum Turn<'a> {
    /// Ask upstream, then [`Leader::finish`].
    Lead(Leader<'a>),
    /// Wait for the leader with [`follow`].
    Follow(watch::Receiver<Option<bool>>),
}

/// The query asking upstream for everyone. Dropping it without finishing (a panic, a cancelled
/// task) counts as a failed lookup, so followers never wait for good.
pub struct Leader<'a> {
    flight: &'a InFlight,
    key: Key,
    done: watch::Sender<Option<bool>>,
}

impl InFlight {
    /// Joins the lookup of `name` and `qtype`, leading it if none is under way.
    pub fn join(&self, name: &str, qtype: u16) -> Turn<'_> {
        let key: Key = (name.into(), qtype);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.entry(key) {
            Entry::Occupied(e) => Turn::Follow(e.get().clone()),
            Entry::Vacant(e) => {
                let (done, waiting) = watch::channel(None);
                let key = e.key().clone();
                e.insert(waiting);
                Turn::Lead(Leader {
                    flight: self,
                    key,
                    done,
                })
            }
        }
    }
}

impl Leader<'_> {
    /// Tells the followers whether an answer is now in the cache.
    pub fn finish(self, cached: bool) {
        self.done.send_replace(Some(cached));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // A query that joined after `finish` reads the result at once; one arriving after
        // this leads a lookup of its own.
        self.flight
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Waits for the leader: whether it put an answer in the cache.
pub async fn follow(mut leader: watch::Receiver<Option<bool>>) -> bool {
    match leader.wait_for(Option::is_some).await {
        Ok(cached) => cached.unwrap_or(false),
        // The leader went without finishing.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_learn_what_the_leader_found_and_the_next_lookup_leads_anew() {
        let flight = InFlight::default();
        let Turn::Lead(leader) = flight.join("new.example", 1) else {
            panic!("the first leads");
        };
        let Turn::Follow(a) = flight.join("new.example", 1) else {
            panic!("the second follows");
        };
        assert!(
            matches!(flight.join("new.example", 28), Turn::Lead(_)),
            "another type is another lookup"
        );
        let waiting = tokio::spawn(follow(a));
        leader.finish(true);
        assert!(waiting.await.unwrap());
        let Turn::Lead(again) = flight.join("new.example", 1) else {
            panic!("the lookup is over: the next one leads");
        };
        let Turn::Follow(b) = flight.join("new.example", 1) else {
            panic!("follows");
        };
        drop(again);
        assert!(!follow(b).await, "a leader that vanished found nothing");
    }
}
