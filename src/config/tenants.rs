//! Tenant names and per-tenant retention as configured (`tenants`,
//! `tenant_retention`, a token's `role@tenant`). What a tenant may see is
//! `crate::tenant`'s job; this is only the syntax the config accepts.

use std::time::Duration;

/// Longest tenant name.
pub const MAX_TENANT_BYTES: usize = 128;

/// Checks a tenant name's syntax: 1-128 characters of `[A-Za-z0-9._-]`
/// (what WMS tenant ids are made of; `:`, `,` and `@` stay free for the
/// token syntax).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_TENANT_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a tenant is 1-{MAX_TENANT_BYTES} characters of [A-Za-z0-9._-]"
        ))
    }
}

/// `tenant_retention`'s text form, `acme=1d,beta=12h`: tenants with a
/// positive age, each listed once (empty: none).
pub fn parse_retention(value: &str) -> Result<Vec<(String, Duration)>, String> {
    let mut ages: Vec<(String, Duration)> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (tenant, age) = entry
            .split_once('=')
            .ok_or_else(|| format!("expected tenant=duration, like acme=1d, in {entry:?}"))?;
        let tenant = tenant.trim();
        check_name(tenant)?;
        let age = super::parse_duration(age).map_err(|e| format!("{tenant}: {e}"))?;
        if age.is_zero() {
            return Err(format!("{tenant}: the age must be positive"));
        }
        if ages.iter().any(|(t, _)| t == tenant) {
            return Err(format!("{tenant} is listed twice"));
        }
        ages.push((tenant.to_owned(), age));
    }
    Ok(ages)
}
