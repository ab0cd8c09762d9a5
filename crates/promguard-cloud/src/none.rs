//! The provider of a deployment whose hosts all exist already: it creates
//! nothing and knows no host, so a deployment of servers the user runs
//! needs no cloud account, token or local namespaces.

use async_trait::async_trait;
use promguard_core::{Capabilities, DeploymentName, HostName, SshPublicKey};

use crate::{CloudError, CloudProvider, Host, HostRequest};

/// No provider: every host of the deployment is one the user runs.
#[derive(Debug, Clone)]
pub struct NoProvider {
    deployment: DeploymentName,
}

impl NoProvider {
    /// The provider of `deployment`, whose config names no host to create.
    pub fn new(deployment: DeploymentName) -> Self {
        Self { deployment }
    }

    fn refuse(&self, what: &str) -> CloudError {
        CloudError::Deployment {
            deployment: self.deployment.clone(),
            message: format!(
                "cannot {what}: every host in the config is one you run already (it has an address), so no provider is set up; to create or destroy hosts, name a host without an address and set deployment.provider"
            ),
        }
    }
}

#[async_trait]
impl CloudProvider for NoProvider {
    fn name(&self) -> &'static str {
        "none"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::EXISTING
    }

    fn discovery_hint(&self) -> &'static str {
        "nothing (every host is one you run)"
    }

    async fn preflight(&self) -> Result<(), CloudError> {
        Ok(())
    }

    async fn reconcile_deployment(&self) -> Result<(), CloudError> {
        Ok(())
    }

    async fn register_ssh_key(&self, _key: &SshPublicKey) -> Result<(), CloudError> {
        Err(self.refuse("register a login key"))
    }

    async fn prepare_host_keys(
        &self,
        _requests: &[HostRequest],
    ) -> Result<Vec<(HostName, SshPublicKey)>, CloudError> {
        Ok(Vec::new())
    }

    async fn create_hosts(&self, _requests: &[HostRequest]) -> Result<Vec<Host>, CloudError> {
        Err(self.refuse("create hosts"))
    }

    async fn list_hosts(&self) -> Result<Vec<Host>, CloudError> {
        Ok(Vec::new())
    }

    async fn destroy_hosts(&self, names: &[HostName]) -> Result<(), CloudError> {
        match names.is_empty() {
            true => Ok(()),
            false => Err(self.refuse("destroy hosts a provider made")),
        }
    }

    async fn destroy_deployment(&self) -> Result<(), CloudError> {
        Ok(())
    }
}
