//! The state of a run, saved as it changes.
//!
//! Where the state is kept is the caller's choice: a [`StateStore`] loads
//! and saves it ([`StateFile`](crate::state::StateFile) is the CLI's, an
//! embedder may keep it in a database). The workflows hold a [`Journal`]:
//! every change that concerns what exists (a key, a host, a pinned host
//! key) is saved before the workflow goes on, so a run cut off anywhere
//! never forgets a host or a key. Once the run is cancelled the journal is
//! [closed](Journal::close): a save in progress completes, none starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::names::DeploymentName;
use crate::state::{State, StateError};

/// Where a deployment's state is kept.
pub trait StateStore: Send + Sync {
    /// The stored state; `Ok(None)` when there is none yet.
    fn load(&self) -> Result<Option<State>, StateError>;

    /// Replaces the stored state. Must be atomic: a crash leaves the old
    /// state or the new one, and secrets in it must stay private.
    fn save(&self, state: &State) -> Result<(), StateError>;

    /// Where the state is, for messages ("state file /srv/promguard.state.json").
    fn location(&self) -> String;

    /// The stored state, checked to belong to `deployment`.
    fn load_for(&self, deployment: &DeploymentName) -> Result<Option<State>, StateError> {
        let state = self.load()?;
        if let Some(s) = &state {
            if &s.deployment != deployment {
                return Err(StateError::WrongDeployment {
                    location: self.location(),
                    found: s.deployment.to_string(),
                    expected: deployment.to_string(),
                });
            }
        }
        Ok(state)
    }
}

/// A state kept in memory only: for tests, and for embedders that persist
/// it themselves afterwards (then a crash forgets what the run made).
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<Option<State>>);

impl MemoryStore {
    /// A store holding `state`.
    pub fn new(state: Option<State>) -> Self {
        Self(Mutex::new(state))
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Option<State>, StateError> {
        Ok(self.0.lock().expect("no panics while storing").clone())
    }

    fn save(&self, state: &State) -> Result<(), StateError> {
        *self.0.lock().expect("no panics while storing") = Some(state.clone());
        Ok(())
    }

    fn location(&self) -> String {
        "in-memory state".to_owned()
    }
}

/// The state of one run, shared by its workflows and saved on every change.
pub struct Journal {
    store: Arc<dyn StateStore>,
    state: Mutex<State>,
    /// False once closed; held while saving, so closing waits for a save
    /// in progress.
    open: Mutex<bool>,
    /// True once this journal saved: from then on the store holds exactly
    /// `state`, and an update that changes nothing need not be saved again.
    saved: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state holds private keys.
        f.debug_struct("Journal")
            .field("store", &self.store.location())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// A journal starting from `state` (usually what `store` holds); nothing
    /// is saved until the first [`update`](Self::update).
    pub fn new(store: Arc<dyn StateStore>, state: State) -> Self {
        Self {
            store,
            state: Mutex::new(state),
            open: Mutex::new(true),
            saved: AtomicBool::new(false),
        }
    }

    /// Changes the state with `f` and saves it. An update that leaves the
    /// state as this journal last saved it is not saved again: a converged
    /// run records every host, and saving each of those identical states
    /// (serialising and fsyncing the whole state per host) made a no-op
    /// over many hosts quadratic.
    pub fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), StateError> {
        let mut state = self
            .state
            .lock()
            .expect("no panics while holding the state");
        let before = self.saved.load(Ordering::Acquire).then(|| state.clone());
        f(&mut state);
        let open = self.open.lock().expect("no panics while saving");
        if !*open {
            return Err(StateError::Closed {
                location: self.store.location(),
            });
        }
        if before.as_ref() == Some(&*state) {
            return Ok(());
        }
        // After a failed save the store may hold less than `state`: the
        // next update must save even if it changes nothing.
        let result = self.store.save(&state);
        self.saved.store(result.is_ok(), Ordering::Release);
        result
    }

    /// A copy of the state as it is now.
    pub fn snapshot(&self) -> State {
        self.state
            .lock()
            .expect("no panics while holding the state")
            .clone()
    }

    /// Stops saving: waits for a save in progress, then every later
    /// [`update`](Self::update) fails with [`StateError::Closed`].
    pub fn close(&self) {
        *self.open.lock().expect("no panics while saving") = false;
    }

    /// Where the state is kept, for messages.
    pub fn location(&self) -> String {
        self.store.location()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_every_update_until_closed() {
        let name = DeploymentName::new("journal").unwrap();
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::new(store.clone(), State::new(name.clone()));
        assert_eq!(store.load().unwrap(), None);
        journal
            .update(|s| {
                s.provider.insert("k".into(), "v".into());
            })
            .unwrap();
        assert_eq!(store.load().unwrap().unwrap().provider["k"], "v");
        journal.close();
        let err = journal
            .update(|s| {
                s.provider.insert("k".into(), "w".into());
            })
            .unwrap_err();
        assert!(matches!(err, StateError::Closed { .. }), "{err}");
        assert_eq!(store.load().unwrap().unwrap().provider["k"], "v");
        let other = DeploymentName::new("other").unwrap();
        assert!(matches!(
            store.load_for(&other),
            Err(StateError::WrongDeployment { .. })
        ));
        assert!(store.load_for(&name).unwrap().is_some());
    }

    /// Counts saves.
    #[derive(Default)]
    struct Counting(MemoryStore, std::sync::atomic::AtomicUsize);

    impl StateStore for Counting {
        fn load(&self) -> Result<Option<State>, StateError> {
            self.0.load()
        }
        fn save(&self, state: &State) -> Result<(), StateError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.save(state)
        }
        fn location(&self) -> String {
            self.0.location()
        }
    }

    #[test]
    fn an_update_that_changes_nothing_is_saved_once_then_not_again() {
        let name = DeploymentName::new("journal").unwrap();
        let store = Arc::new(Counting::default());
        let journal = Journal::new(store.clone(), State::new(name));
        // The first update saves even if it changes nothing: the store may
        // not hold the journal's starting state.
        journal.update(|_| {}).unwrap();
        assert_eq!(store.1.load(Ordering::SeqCst), 1);
        assert!(store.load().unwrap().is_some());
        for _ in 0..5 {
            journal.update(|_| {}).unwrap();
        }
        assert_eq!(store.1.load(Ordering::SeqCst), 1);
        journal
            .update(|s| {
                s.provider.insert("k".into(), "v".into());
            })
            .unwrap();
        assert_eq!(store.1.load(Ordering::SeqCst), 2);
        assert_eq!(store.load().unwrap().unwrap().provider["k"], "v");
    }
}
