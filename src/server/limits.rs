//! Connection admission: the global `max_connections` budget and the per-client-address cap
//! `max_connections_per_ip`, so one address cannot take the whole budget. A connection is
//! admitted with a [`Slot`] that gives both back when it is dropped. No I/O here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` connections are open.
    MaxConnections,
    /// This address already has `max_connections_per_ip` open.
    PerIp,
}

impl Refused {
    /// The `reason` label of `berth_connections_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::PerIp => "per_ip",
        }
    }
}

/// Open connections, in total and per client address.
pub struct Admission {
    total: Arc<Semaphore>,
    max_per_ip: usize,
    /// A std lock: held only to bump a counter, never across an `.await`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// At most `max` connections, at most `max_per_ip` from one address.
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total: Arc::new(Semaphore::new(max)),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Admit a connection from `ip`, or say why not. Never waits.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = ip.to_canonical();
        {
            let mut per_ip = self.per_ip.lock().expect("the per-address map lock is never poisoned");
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        // From here the slot owns the per-address count: dropping it on refusal gives it back.
        let mut slot = Slot {
            admission: self.clone(),
            ip,
            _permit: None,
        };
        slot._permit = Some(
            self.total
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refused::MaxConnections)?,
        );
        Ok(slot)
    }
}

/// An admitted connection; dropping it frees its place.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .expect("the per-address map lock is never poisoned");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let a = Admission::new(3, 2);
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let x1 = a.try_admit(x).unwrap();
        let _x2 = a.try_admit(x).unwrap();
        assert_eq!(a.try_admit(x).err(), Some(Refused::PerIp), "third from one address");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            a.try_admit(mapped).err(),
            Some(Refused::PerIp),
            "IPv4-mapped is the same address"
        );
        let _y1 = a.try_admit(y).unwrap();
        assert_eq!(a.try_admit(z).err(), Some(Refused::MaxConnections), "total reached");
        assert_eq!(
            a.try_admit(y).err(),
            Some(Refused::MaxConnections),
            "a refusal for the total gives the address count back"
        );
        drop(x1);
        let _z1 = a.try_admit(z).unwrap();
        drop(_z1);
        assert!(
            a.per_ip.lock().unwrap().get(&z).is_none(),
            "no entry left for a gone address"
        );
    }
}
