//! A gear's environment as the API changes it: the layers (system,
//! cartridge, linked, user), and setting and unsetting user variables.

use super::*;
use crate::api::GearRef;
use crate::api::reply;
use crate::env::{self, Layers};
use crate::state::GearRecord;

impl Node {
    pub(super) fn layers(&self, r: &GearRecord) -> Layers {
        self.layers_in(r, r.slot)
    }

    /// The layers of the app started in `slot` (its port is that slot's).
    pub(super) fn layers_in(&self, r: &GearRecord, slot: u8) -> Layers {
        let port = self
            .cartridge(&r.cartridge)
            .ok()
            .and_then(|c| c.manifest().primary_endpoint().map(|e| e.port_in(slot)));
        Layers {
            system: env::system_layer(r, port, &self.config.domain),
            cartridge: r.cartridge_env.clone(),
            process: r.process_env.clone(),
            linked: self.linked_env(r),
            // a PORT set before the node refused it stays without effect,
            // as it was when the cartridge's value beat the user's
            user: r
                .user_env
                .iter()
                .filter(|(k, _)| !env::CARTRIDGE_OWNED.iter().any(|(owned, _)| owned == k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Set user variables.
    pub async fn env_set(
        &self,
        gear: &GearRef,
        vars: Vec<(String, String)>,
    ) -> ApiResult<reply::EnvChanged> {
        for (k, v) in &vars {
            env::check_user_key(k).map_err(invalid)?;
            if v.len() > 64 * 1024 || v.contains('\0') {
                return Err(invalid(format!(
                    "the value of {k} is longer than 64 KiB or contains a NUL byte"
                )));
            }
        }
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        env::check_room(
            &g.record().user_env,
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "the gear's environment",
        )
        .map_err(invalid)?;
        g.update(&self.config, |r| {
            for (k, v) in vars {
                r.user_env.insert(k, v);
            }
        })?;
        Ok(reply::EnvChanged {
            note: "restart the gear for running processes to see the change".into(),
        })
    }

    /// Remove user variables.
    pub async fn env_unset(
        &self,
        gear: &GearRef,
        keys: Vec<String>,
    ) -> ApiResult<reply::EnvRemoved> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let (unset, missing): (Vec<String>, Vec<String>) = keys
            .into_iter()
            .partition(|k| g.record().user_env.contains_key(k));
        if !unset.is_empty() {
            g.update(&self.config, |r| {
                for k in &unset {
                    r.user_env.remove(k);
                }
            })?;
        }
        Ok(reply::EnvRemoved { unset, missing })
    }

    /// The environment by layer.
    pub fn env_list(&self, gear: &GearRef) -> ApiResult<reply::Environment> {
        let r = self.find(gear)?.record();
        let layers = self.layers(&r);
        Ok(reply::Environment {
            effective: layers.effective(),
            layers: layers.into(),
        })
    }
}
