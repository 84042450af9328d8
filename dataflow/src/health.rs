//! Health of the running pipeline: each component (a sink's writer, later a source) reports
//! whether it can do its work; the process is ready when every component can.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a component says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentHealth {
    Ready,
    /// Not able to do its work now, and why (e.g. "circuit open after 3 failures: …").
    NotReady(String),
}

/// The process-wide registry behind `/health/ready`.
#[derive(Debug, Default)]
pub struct Health {
    components: Mutex<BTreeMap<String, ComponentHealth>>,
}

impl Health {
    pub fn set(&self, component: &str, health: ComponentHealth) {
        let mut components = self.components.lock().expect("health lock is never poisoned");
        components.insert(component.to_owned(), health);
    }

    /// `Ok` when every component is ready; otherwise the reasons, by component.
    pub fn readiness(&self) -> Result<(), BTreeMap<String, String>> {
        let components = self.components.lock().expect("health lock is never poisoned");
        let reasons: BTreeMap<String, String> = components
            .iter()
            .filter_map(|(name, h)| match h {
                ComponentHealth::Ready => None,
                ComponentHealth::NotReady(why) => Some((name.clone(), why.clone())),
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let health = Health::default();
        assert!(health.readiness().is_ok());
        health.set("postgres sink (worker 0)", ComponentHealth::NotReady("circuit open".into()));
        health.set("postgres sink (worker 1)", ComponentHealth::Ready);
        let reasons = health.readiness().unwrap_err();
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons["postgres sink (worker 0)"], "circuit open");
        health.set("postgres sink (worker 0)", ComponentHealth::Ready);
        assert!(health.readiness().is_ok());
    }
}
