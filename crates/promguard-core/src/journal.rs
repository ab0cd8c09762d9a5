//! The state of a run, saved as it changes.
//!
//! Where the state is kept is the caller's choice: a [`StateStore`] loads
//! and saves it ([`StateFile`](crate::state::StateFile) is the CLI's, an
//! embedder may keep it in a database). The workflows hold a [`Journal`]:
//! every change that concerns what exists (a key, a host, a pinned host
//! key) is saved before the workflow goes on, so a run cut off anywhere
//! never forgets a host or a key. Once the run is cancelled the journal is
//! [closed](Journal::close): a save in progress completes, none starts.

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
        }
    }

    /// Changes the state with `f` and saves it.
    pub fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), StateError> {
        let mut state = self
            .state
            .lock()
            .expect("no panics while holding the state");
        f(&mut state);
        let open = self.open.lock().expect("no panics while saving");
        if !*open {
            return Err(StateError::Closed {
                location: self.store.location(),
            });
        }
        self.store.save(&state)
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
}
