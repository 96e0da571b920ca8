//! Server-side policy for resource limits: defaults for what a request leaves unset,
//! maxima it may not exceed, and refusal of values that make no sense.

use crate::error::Error;
use crate::spec::Limits;
use common::inert::{Brief, Quoted};

/// Bounds no configuration can widen: beyond them a value is a mistake, not a wish.
const MIN_CPUS: f64 = 0.01;
const MAX_CPUS: f64 = 4096.0;
const MIN_MEMORY: u64 = 1 << 20;
const MAX_MEMORY: u64 = 1 << 50;
const MAX_PIDS: u64 = 4_194_304;
const MAX_RATE: u64 = 1 << 40;

/// Defaults and maxima from the server's configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitPolicy {
    pub default_cpus: Option<f64>,
    pub default_memory_bytes: Option<u64>,
    pub default_pids: Option<u64>,
    pub max_cpus: Option<f64>,
    pub max_memory_bytes: Option<u64>,
    pub max_pids: Option<u64>,
    pub max_device_bps: Option<u64>,
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

impl LimitPolicy {
    /// The limits a job gets: the request's, or the defaults where it set none, all
    /// checked against sanity bounds and the configured maxima.
    pub fn resolve(&self, requested: &Limits) -> Result<Limits, Error> {
        let mut limits = requested.clone();
        limits.cpus = limits.cpus.or(self.default_cpus);
        limits.memory_bytes = limits.memory_bytes.or(self.default_memory_bytes);
        limits.pids = limits.pids.or(self.default_pids);

        if let Some(cpus) = limits.cpus {
            if !cpus.is_finite() || !(MIN_CPUS..=MAX_CPUS).contains(&cpus) {
                return Err(invalid(format!(
                    "cpus must be a number from {MIN_CPUS} to {MAX_CPUS}, not {cpus}"
                )));
            }
            if let Some(max) = self.max_cpus.filter(|m| cpus > *m) {
                return Err(invalid(format!(
                    "cpus {cpus} is above the server's maximum of {max}"
                )));
            }
        }
        if let Some(memory) = limits.memory_bytes {
            if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) {
                return Err(invalid(format!(
                    "memory must be from 1 MiB to 1 PiB, not {memory} bytes"
                )));
            }
            if let Some(max) = self.max_memory_bytes.filter(|m| memory > *m) {
                return Err(invalid(format!(
                    "memory {memory} bytes is above the server's maximum of {max} bytes"
                )));
            }
        }
        if let Some(pids) = limits.pids {
            if !(1..=MAX_PIDS).contains(&pids) {
                return Err(invalid(format!(
                    "pids must be from 1 to {MAX_PIDS}, not {pids}"
                )));
            }
            if let Some(max) = self.max_pids.filter(|m| pids > *m) {
                return Err(invalid(format!(
                    "pids {pids} is above the server's maximum of {max}"
                )));
            }
        }
        for rate in limits
            .device_read_bps
            .iter()
            .chain(&limits.device_write_bps)
        {
            if !rate.device.starts_with('/') {
                return Err(invalid(format!(
                    "device {} must be an absolute path such as /dev/sda",
                    Quoted(&rate.device)
                )));
            }
            let bps = rate.bytes_per_second;
            if !(1..=MAX_RATE).contains(&bps) {
                return Err(invalid(format!(
                    "the rate for {} must be from 1 byte/s to 1 TiB/s, not {bps}",
                    Brief(&rate.device)
                )));
            }
            if let Some(max) = self.max_device_bps.filter(|m| bps > *m) {
                return Err(invalid(format!(
                    "the rate {bps} bytes/s for {} is above the server's maximum of {max}",
                    Brief(&rate.device)
                )));
            }
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DeviceRate;

    fn with(f: impl FnOnce(&mut Limits)) -> Limits {
        let mut l = Limits::default();
        f(&mut l);
        l
    }

    #[test]
    fn defaults_fill_unset_limits_only() {
        let policy = LimitPolicy {
            default_memory_bytes: Some(256 << 20),
            default_pids: Some(100),
            ..Default::default()
        };
        let got = policy.resolve(&with(|l| l.pids = Some(8))).unwrap();
        assert_eq!(got.memory_bytes, Some(256 << 20));
        assert_eq!(got.pids, Some(8));
        assert_eq!(got.cpus, None);
    }

    #[test]
    fn nonsense_and_excess_are_refused() {
        let policy = LimitPolicy {
            max_cpus: Some(2.0),
            max_memory_bytes: Some(1 << 30),
            max_pids: Some(1000),
            max_device_bps: Some(100 << 20),
            ..Default::default()
        };
        let rate = |device: &str, bps| {
            vec![DeviceRate {
                device: device.into(),
                bytes_per_second: bps,
            }]
        };
        let bad = [
            with(|l| l.cpus = Some(0.0)),
            with(|l| l.cpus = Some(-1.0)),
            with(|l| l.cpus = Some(f64::NAN)),
            with(|l| l.cpus = Some(f64::INFINITY)),
            with(|l| l.cpus = Some(3.0)),
            with(|l| l.memory_bytes = Some(0)),
            with(|l| l.memory_bytes = Some(1 << 31)),
            with(|l| l.memory_bytes = Some(u64::MAX)),
            with(|l| l.pids = Some(0)),
            with(|l| l.pids = Some(5000)),
            with(|l| l.device_read_bps = rate("/dev/sda", 0)),
            with(|l| l.device_write_bps = rate("/dev/sda", 200 << 20)),
            with(|l| l.device_write_bps = rate("sda", 1)),
        ];
        for limits in bad {
            assert!(
                matches!(policy.resolve(&limits), Err(Error::InvalidArgument(_))),
                "{limits:?} accepted"
            );
        }
        let ok = with(|l| {
            l.cpus = Some(0.5);
            l.memory_bytes = Some(64 << 20);
            l.pids = Some(8);
            l.device_write_bps = rate("/dev/sda", 1 << 20);
        });
        assert_eq!(policy.resolve(&ok).unwrap(), ok);
        let err = policy.resolve(&with(|l| l.cpus = Some(3.0))).unwrap_err();
        assert_eq!(err.to_string(), "cpus 3 is above the server's maximum of 2");
    }
}
