//! A way for other parts of Kiln (the HTTP file API) to ask a controller to reconcile an
//! object now, without writing anything to the API server.
//!
//! A broadcast: with several watched namespaces there is one controller per namespace, and
//! each ignores references to objects outside its cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

/// Sends reconcile requests to the controllers of one kind. Cheap to clone.
pub struct Nudge<K: Resource<DynamicType = ()>> {
    tx: broadcast::Sender<ObjectRef<K>>,
}

impl<K: Resource<DynamicType = ()>> Clone for Nudge<K> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Default for Nudge<K> {
    fn default() -> Self {
        // A burst of uploads beyond this many pending requests drops the oldest; each
        // request only says "look again", so dropping duplicates loses nothing.
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Nudge<K> {
    /// A stream of requests for `Controller::reconcile_on`.
    pub fn subscribe(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        BroadcastStream::new(self.tx.subscribe()).filter_map(|r| async move { r.ok() })
    }

    /// Asks for a reconcile of `name` in `namespace`. Dropped when no controller runs (not
    /// leader, shutting down): its next resync catches up.
    pub fn nudge(&self, namespace: &str, name: &str) {
        let _ = self.tx.send(ObjectRef::new(name).within(namespace));
    }
}

/// A [`Nudge`] that asks at most once per object per `window`: at once for the first change,
/// then, if more changes came during the window, once more when it ends, so the last change
/// is always looked at. A stream of a thousand uploads to one Job then costs the controller
/// (and the API server, for the status it writes) a few reconciles, not a thousand.
pub struct Throttled<K: Resource<DynamicType = ()>> {
    nudge: Nudge<K>,
    window: Duration,
    recent: Arc<Mutex<HashMap<ObjectRef<K>, Window>>>,
}

/// The open window of one object.
#[derive(Clone, Copy)]
struct Window {
    until: Instant,
    /// A request is due when the window closes.
    trailing: bool,
}

/// Objects remembered before closed windows are forgotten.
const REMEMBERED: usize = 4096;

impl<K: Resource<DynamicType = ()> + 'static> Throttled<K> {
    pub fn new(nudge: Nudge<K>, window: Duration) -> Self {
        Self {
            nudge,
            window,
            recent: Arc::default(),
        }
    }

    /// Asks for a reconcile of `name` in `namespace`, now or when the object's window closes.
    /// Must be called within the Tokio runtime (the trailing request is a timer task).
    pub fn nudge(&self, namespace: &str, name: &str) {
        let key = ObjectRef::new(name).within(namespace);
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= REMEMBERED {
            recent.retain(|_, w| w.trailing || w.until > now);
        }
        match recent.get_mut(&key) {
            Some(w) if now < w.until => {
                if !w.trailing {
                    w.trailing = true;
                    let until = w.until;
                    let (nudge, window, recent) =
                        (self.nudge.clone(), self.window, self.recent.clone());
                    let (namespace, name) = (namespace.to_owned(), name.to_owned());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until).await;
                        let key = ObjectRef::new(&name).within(&namespace);
                        recent
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(
                                key,
                                Window {
                                    until: Instant::now() + window,
                                    trailing: false,
                                },
                            );
                        nudge.nudge(&namespace, &name);
                    });
                }
            }
            _ => {
                recent.insert(
                    key,
                    Window {
                        until: now + self.window,
                        trailing: false,
                    },
                );
                drop(recent);
                self.nudge.nudge(namespace, name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KilnJob;

    /// Requests received so far, without waiting.
    fn drain(rx: &mut broadcast::Receiver<ObjectRef<KilnJob>>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.name)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_gives_one_request_now_and_one_when_the_window_closes() {
        let nudge = Nudge::<KilnJob>::default();
        let mut rx = nudge.tx.subscribe();
        let throttled = Throttled::new(nudge, Duration::from_millis(500));
        for _ in 0..100 {
            throttled.nudge("ns", "a");
        }
        throttled.nudge("ns", "b");
        assert_eq!(drain(&mut rx), ["a", "b"], "the first of each, at once");
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(drain(&mut rx).is_empty());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(drain(&mut rx), ["a"], "the trailing request for the burst");
        // A change right after the trailing request waits for the next window.
        throttled.nudge("ns", "a");
        assert!(drain(&mut rx).is_empty());
        tokio::time::sleep(Duration::from_millis(501)).await;
        assert_eq!(drain(&mut rx), ["a"]);
        // Quiet for a window: the next change goes at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        throttled.nudge("ns", "a");
        assert_eq!(drain(&mut rx), ["a"]);
    }
}
