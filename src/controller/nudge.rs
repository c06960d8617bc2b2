//! A way for other parts of Kiln (the HTTP file API) to ask a controller to reconcile an
//! object now, without writing anything to the API server.
//!
//! A broadcast: with several watched namespaces there is one controller per namespace, and
//! each ignores references to objects outside its cache.

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::broadcast;
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
