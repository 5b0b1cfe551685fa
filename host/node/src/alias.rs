//! Aliases: extra host names the frontend routes to a gear
//! (`gear alias add web www.example.com`), besides its own
//! `<gear>-<namespace>.<domain>`.
//!
//! An alias belongs to one gear on the node. Names of the form
//! `<label>.<domain>` (one label under the node's domain) are left to gears'
//! own names, so an alias can never take the name of a gear created later.
//! Aliases are stored in the gear's record and routed as soon as they are
//! added.

use crate::api::{ApiError, ErrorKind, GearRef, reply};
use crate::node::{ApiResult, Node, invalid};

/// Most aliases one gear may have.
pub const MAX_ALIASES: usize = 32;

/// Check a host name and return it lower-case, or say what is wrong with it.
pub fn check_hostname(name: &str, domain: &str) -> Result<String, String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{name:?} is not a host name; give a DNS name of 1 to 253 characters, e.g. www.example.com"
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!(
                "{name:?} is not a host name; use labels of letters, digits and inner dashes separated by dots, e.g. www.example.com"
            ));
        }
    }
    if labels.len() < 2 {
        return Err(format!(
            "{name:?} has no domain; give a full name such as {name}.example.com"
        ));
    }
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!(
            "{name:?} is an address, not a host name; the frontend routes by name"
        ));
    }
    if let Some(label) = name.strip_suffix(&format!(".{domain}"))
        && !label.contains('.')
    {
        return Err(format!(
            "{name:?} is reserved: names <label>.{domain} belong to gears (<gear>-<namespace>.{domain}); pick a name in another domain or a deeper one, e.g. www.{label}.{domain}"
        ));
    }
    if name == domain {
        return Err(format!(
            "{name:?} is the node's own domain; pick a name for the gear"
        ));
    }
    Ok(name)
}

/// The longest HSTS max-age accepted (two years, in seconds).
const MOST_HSTS: u64 = 2 * 365 * 24 * 3600;

/// `hostname` as aliases are stored (trimmed, no trailing dot, lower case),
/// when gear `r` has it; else NotFound, `advice` saying what to run.
fn own_alias(
    r: &crate::state::GearRecord,
    hostname: &str,
    advice: impl FnOnce(&str) -> String,
) -> ApiResult<String> {
    let name = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    if r.aliases.contains(&name) {
        return Ok(name);
    }
    Err(ApiError::new(
        ErrorKind::NotFound,
        format!("gear {} has no alias {name}; {}", r.name, advice(&name)),
    ))
}

impl Node {
    /// `gear alias add GEAR HOSTNAME`.
    pub async fn alias_add(
        &self,
        gear: &GearRef,
        hostname: &str,
    ) -> ApiResult<reply::AliasChanged> {
        let name = check_hostname(hostname, &self.config().domain).map_err(invalid)?;
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        // names are unique on the node: one change of names at a time
        let _names = self.create.lock().await;
        let r = g.record();
        if self.http_port(&r).is_none() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} has no HTTP endpoint (cartridge {}), so the frontend does not route to it",
                    r.name, r.cartridge
                ),
            ));
        }
        if r.aliases.contains(&name) {
            return Ok(reply::AliasChanged {
                gear: r.name,
                hostname: name,
                aliases: r.aliases,
                unchanged: true,
            });
        }
        if let Some(other) = self
            .gears_snapshot()
            .iter()
            .map(|o| o.record())
            .find(|o| o.aliases.contains(&name) || self.public_name(o) == name)
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{name} already leads to {}; remove it there first",
                    crate::tenancy::other_gear(&r.namespace, &other.name, &other.namespace)
                ),
            ));
        }
        if r.aliases.len() >= MAX_ALIASES {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} has {MAX_ALIASES} aliases already; remove one first",
                    r.name
                ),
            ));
        }
        // the name is the cluster's: claimed there first, given back should the record fail
        let cluster = self.cluster();
        if let Some(cluster) = cluster {
            let mut p = crate::cluster::placement(&r, cluster.node());
            p.aliases.push(name.clone());
            cluster
                .set_aliases(&p, Some(&name), None)
                .await
                .map_err(crate::cluster::api_error)?;
        }
        let next = match g.update(self.config(), |r| r.aliases.push(name.clone())) {
            Ok(next) => next,
            Err(e) => {
                if let Some(cluster) = cluster {
                    let p = crate::cluster::placement(&r, cluster.node());
                    if let Err(e) = cluster.set_aliases(&p, None, Some(&name)).await {
                        tracing::warn!(alias = %name, error = %e, "could not give back an alias in the cluster");
                    }
                }
                return Err(e);
            }
        };
        self.update_routes(&g);
        g.hook_log
            .line("alias[node]", &format!("added alias {name}"));
        Ok(reply::AliasChanged {
            gear: next.name,
            hostname: name,
            aliases: next.aliases,
            unchanged: false,
        })
    }

    /// `gear alias remove GEAR HOSTNAME`.
    pub async fn alias_remove(
        &self,
        gear: &GearRef,
        hostname: &str,
    ) -> ApiResult<reply::AliasChanged> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let name = own_alias(&r, hostname, |_| {
            format!("see `gear alias list {}`", r.name)
        })?;
        let next = g.update(self.config(), |r| r.aliases.retain(|a| *a != name))?;
        if let Some(cluster) = self.cluster() {
            let p = crate::cluster::placement(&next, cluster.node());
            if let Err(e) = cluster.set_aliases(&p, None, Some(&name)).await {
                tracing::warn!(alias = %name, error = %e, "could not give back an alias in the cluster; it stays taken there until the gear is destroyed");
            }
        }
        self.certs.remove_alias(&name);
        if let Some(acme) = &self.acme {
            acme.forget(&name);
        }
        self.update_routes(&g);
        g.hook_log
            .line("alias[node]", &format!("removed alias {name}"));
        Ok(reply::AliasChanged {
            gear: next.name,
            hostname: name,
            aliases: next.aliases,
            unchanged: false,
        })
    }

    /// `gear alias cert GEAR HOST`: attach a certificate to an alias.
    pub async fn alias_cert(
        &self,
        gear: &GearRef,
        hostname: &str,
        certificate: &str,
        key: &str,
    ) -> ApiResult<reply::AliasCertificate> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let name = own_alias(&r, hostname, |name| {
            format!(
                "add it with `gear alias add {} {name} --cert FILE --key FILE`",
                r.name
            )
        })?;
        let certs = self.certs.clone();
        let (host, chain, pem) = (name.clone(), certificate.to_string(), key.to_string());
        let pair = tokio::task::spawn_blocking(move || {
            certs.set_alias(&host, chain.as_bytes(), pem.as_bytes())
        })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))?
        .map_err(|e| invalid(format!("the certificate for {name} was not attached: {e}")))?;
        let not_after = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(pair.not_after.max(0) as u64),
        )
        .to_string();
        g.hook_log.line(
            "alias[node]",
            &format!("a certificate for {name} (until {not_after}) is served"),
        );
        // a gear that asks for HTTPS gets it on this name now
        self.update_routes(&g);
        Ok(reply::AliasCertificate {
            hostname: name,
            not_after,
            issuer: pair.issuer,
        })
    }

    /// `gear alias cert GEAR HOST --acme`: the alias's certificate comes from
    /// the node's ACME server, ordered now and renewed before it expires.
    pub async fn alias_acme(
        &self,
        gear: &GearRef,
        hostname: &str,
    ) -> ApiResult<reply::AliasCertificate> {
        let Some(acme) = &self.acme else {
            return Err(invalid(
                "this node has no ACME server (its operator sets `[acme] directory`); attach \
                 a certificate with --cert FILE --key FILE instead",
            ));
        };
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let name = own_alias(&r, hostname, |name| {
            format!("add it with `gear alias add {} {name} --acme`", r.name)
        })?;
        acme.add(&name);
        g.hook_log.line(
            "alias[node]",
            &format!("a certificate for {name} is ordered from the ACME server"),
        );
        Ok(reply::AliasCertificate {
            hostname: name,
            not_after: String::new(),
            issuer: "ACME (ordered; `gear alias list` shows when it is served)".into(),
        })
    }

    /// `gear https GEAR`: change (or show) what the gear asks of HTTPS.
    pub async fn https_set(
        &self,
        gear: &GearRef,
        redirect: Option<bool>,
        hsts_max_age: Option<u64>,
    ) -> ApiResult<reply::GearHttpsOptions> {
        if redirect == Some(true) && self.config().https.is_none() {
            return Err(invalid(
                "this node serves no HTTPS (its operator sets `[https] listen`), so there is \
                 nothing to redirect to",
            ));
        }
        if hsts_max_age.is_some_and(|age| age > MOST_HSTS) {
            return Err(invalid(format!(
                "an HSTS max-age over {MOST_HSTS} seconds (two years) is not accepted; \
                 31536000 (a year) is usual"
            )));
        }
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let next = g.update(self.config(), |r| {
            if let Some(on) = redirect {
                r.https.redirect = on;
            }
            match hsts_max_age {
                Some(0) => r.https.hsts_max_age = None,
                Some(age) => r.https.hsts_max_age = Some(age),
                None => {}
            }
        })?;
        self.update_routes(&g);
        // the names a redirect applies to: those with a certificate
        let own = self.public_name(&next);
        let mut uncovered = Vec::new();
        if !self.certs.has_operator() {
            uncovered.push(own);
        }
        uncovered.extend(
            next.aliases
                .iter()
                .filter(|a| self.certs.alias(a).is_none())
                .cloned(),
        );
        Ok(reply::GearHttpsOptions {
            redirect: next.https.redirect,
            hsts_max_age: next.https.hsts_max_age,
            without_certificate: if next.https.redirect {
                uncovered
            } else {
                Vec::new()
            },
        })
    }

    /// `gear alias list GEAR`: its own name and its aliases.
    pub fn alias_list(&self, gear: &GearRef) -> ApiResult<reply::HostNames> {
        let r = self.find(gear)?.record();
        let at = |secs: i64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64),
            )
            .to_string()
        };
        let tls = r
            .aliases
            .iter()
            .filter_map(|host| {
                let pair = self.certs.alias(host);
                let acme = self.acme.as_ref().and_then(|a| a.status(host));
                if pair.is_none() && acme.is_none() {
                    return None;
                }
                let failed = acme.as_ref().and_then(|m| m.error.clone());
                Some(reply::AliasTls {
                    hostname: host.clone(),
                    not_after: pair.map(|p| at(p.not_after)),
                    acme: acme.is_some(),
                    next_try: acme
                        .as_ref()
                        .filter(|_| failed.is_some())
                        .map(|m| at(m.next_try as i64)),
                    error: failed,
                })
            })
            .collect();
        Ok(reply::HostNames {
            name: self.public_name(&r),
            gear: r.name,
            aliases: r.aliases,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_and_lower_cased() {
        assert_eq!(
            check_hostname("WWW.Example.com.", "localhost").as_deref(),
            Ok("www.example.com")
        );
        assert_eq!(
            check_hostname("shop.web.localhost", "localhost").as_deref(),
            Ok("shop.web.localhost")
        );
        for bad in [
            "",
            "localhost",
            "web-default.localhost",
            "a..b",
            "-a.com",
            "a_b.com",
            "10.0.0.1",
            "exa mple.com",
        ] {
            assert!(
                check_hostname(bad, "localhost").is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
