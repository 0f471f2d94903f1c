//! The CSV form of an inventory: one record per line, its kind in the first field.
//!
//! ```text
//! # comment; blank lines are skipped; fields are trimmed; no quoting (no field needs commas)
//! host,NAME,COUNT,NIC_GBPS[,MIGRATION_SHARE[,SPARE_HOSTS[,FREE_SLOTS]]]
//! vm,HOST_NAME,COUNT,MEMORY_GIB,DIRTY_MB_S[,DISK_GB[,DISK_WRITE_MB_S]]
//! fix,KEY,VALUE                       (keys and values of the JSON `fix` object)
//! policy,KEY,VALUE[,VALUE...]         (several values make a list: wave_sizes)
//! ```
//!
//! A `vm` row belongs to the host class named before it. Every error in a row names its line
//! (1-based); only the fleet-wide host limit, checked at the end, has none.

use serde_json::{Map, Value};

use crate::inventory::{Fix, HostClass, Inventory, Policy, VmClass};
use crate::PlanError;

pub(crate) fn parse(text: &str) -> Result<Inventory, PlanError> {
    let mut hosts: Vec<HostClass> = Vec::new();
    let mut fix = Map::new();
    let mut policy = Map::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let row = Row { line, fields };
        match row.fields[0] {
            "host" => {
                let host = row.host()?;
                if hosts.iter().any(|h| h.name == host.name) {
                    return Err(row.error(format!("host class {:?} is defined twice", host.name)));
                }
                host.validate("host").map_err(|e| row.wrap(e))?;
                hosts.push(host);
            }
            "vm" => {
                let (name, vm) = row.vm()?;
                vm.validate("vm").map_err(|e| row.wrap(e))?;
                let Some(host) = hosts.iter_mut().find(|h| h.name == name) else {
                    return Err(row.error(format!("no host class named {name:?} before this line")));
                };
                host.vms.push(vm);
            }
            "fix" => {
                let (key, value) = row.key_value(&mut fix)?;
                one_setting::<Fix>(&row, key, value, Fix::validate)?;
            }
            "policy" => {
                let (key, value) = row.key_value(&mut policy)?;
                one_setting::<Policy>(&row, key, value, Policy::validate)?;
            }
            other => {
                return Err(row.error(format!(
                    "unknown record {other:?} (expected host, vm, fix or policy)"
                )))
            }
        }
    }
    // Each setting was checked on its own line; together they are valid too.
    let inv = Inventory {
        hosts,
        fix: serde_json::from_value(Value::Object(fix)).map_err(whole)?,
        policy: serde_json::from_value(Value::Object(policy)).map_err(whole)?,
    };
    inv.validate()?;
    Ok(inv)
}

fn whole(e: serde_json::Error) -> PlanError {
    PlanError::Malformed {
        line: 0,
        message: e.to_string(),
    }
}

/// Checks one `fix`/`policy` setting alone (every other field at its default), so an unknown
/// key, a wrong type or an invalid value is reported at its own line.
fn one_setting<T: serde::de::DeserializeOwned>(
    row: &Row,
    key: &str,
    value: &Value,
    validate: fn(&T) -> Result<(), PlanError>,
) -> Result<(), PlanError> {
    let mut alone = Map::new();
    alone.insert(key.to_string(), value.clone());
    let parsed: T = serde_json::from_value(Value::Object(alone))
        .map_err(|e| row.error(format!("{key}: {e}")))?;
    validate(&parsed).map_err(|e| row.wrap(e))
}

struct Row<'a> {
    line: usize,
    fields: Vec<&'a str>,
}

impl<'a> Row<'a> {
    fn error(&self, message: String) -> PlanError {
        PlanError::Malformed {
            line: self.line,
            message,
        }
    }

    fn wrap(&self, e: PlanError) -> PlanError {
        self.error(e.to_string())
    }

    /// Checks the number of fields: at least `min`, at most `max`, `usage` in the error.
    fn arity(&self, min: usize, max: usize, usage: &str) -> Result<(), PlanError> {
        let n = self.fields.len();
        if n < min || n > max {
            return Err(self.error(format!("expected {usage}, found {n} fields")));
        }
        Ok(())
    }

    fn number(&self, i: usize, what: &str) -> Result<f64, PlanError> {
        match self.fields.get(i) {
            None | Some(&"") => Ok(0.0),
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| self.error(format!("{what}: not a number: {s:?}"))),
        }
    }

    fn count(&self, i: usize, what: &str) -> Result<u64, PlanError> {
        match self.fields.get(i) {
            None | Some(&"") => Ok(0),
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| self.error(format!("{what}: not a whole number: {s:?}"))),
        }
    }

    fn host(&self) -> Result<HostClass, PlanError> {
        self.arity(
            4,
            7,
            "host,NAME,COUNT,NIC_GBPS[,MIGRATION_SHARE[,SPARE_HOSTS[,FREE_SLOTS]]]",
        )?;
        let share = match self.fields.get(4) {
            None | Some(&"") => 0.5,
            Some(_) => self.number(4, "migration_share")?,
        };
        Ok(HostClass {
            name: self.fields[1].to_string(),
            count: self.count(2, "count")?,
            nic_gbps: self.number(3, "nic_gbps")?,
            migration_share: share,
            spare_hosts: self.count(5, "spare_hosts")?,
            free_slots: self.count(6, "free_slots")?,
            vms: Vec::new(),
        })
    }

    fn vm(&self) -> Result<(&'a str, VmClass), PlanError> {
        self.arity(
            5,
            7,
            "vm,HOST_NAME,COUNT,MEMORY_GIB,DIRTY_MB_S[,DISK_GB[,DISK_WRITE_MB_S]]",
        )?;
        let vm = VmClass {
            count: self.count(2, "count")?,
            memory_gib: self.number(3, "memory_gib")?,
            dirty_mb_s: self.number(4, "dirty_mb_s")?,
            disk_gb: self.number(5, "disk_gb")?,
            disk_write_mb_s: self.number(6, "disk_write_mb_s")?,
        };
        Ok((self.fields[1], vm))
    }

    /// A `fix`/`policy` row's key and value, recorded in `into` (a key given twice is refused).
    fn key_value<'m>(
        &self,
        into: &'m mut Map<String, Value>,
    ) -> Result<(&'a str, &'m Value), PlanError> {
        let kind = self.fields[0];
        self.arity(3, usize::MAX, &format!("{kind},KEY,VALUE[,VALUE...]"))?;
        let key = self.fields[1];
        let values: Vec<Value> = self.fields[2..].iter().map(|s| scalar(s)).collect();
        let value = if key == "wave_sizes" {
            Value::Array(values)
        } else if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            return Err(self.error(format!("{kind} {key} takes one value")));
        };
        if into.contains_key(key) {
            return Err(self.error(format!("{kind} {key} is set twice")));
        }
        Ok((key, into.entry(key.to_string()).or_insert(value)))
    }
}

/// A CSV field as a JSON value: a number or boolean when it reads as one, else a string.
fn scalar(s: &str) -> Value {
    match serde_json::from_str::<Value>(s) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(s.to_string()),
    }
}
