//! The fleet scenario's world, derived deterministically from a seed: H
//! hypervisor sessions, V VNIs with a Zipf-like popularity, S subscriptions
//! and R routes per session.
//!
//! Route `g` (`0..H*R`) belongs to session `g / R`; its destination is the
//! IPv4 /32 `10.0.0.0 + g`, its next hop the session's own IPv6 address
//! `fd00:f1ee::<session>` (STANDARD), its VNI drawn from the popularity.
//! So every route is distinct and a received route maps back to its index
//! without a lookup table. Everything is kept in flat vectors (no per-route
//! allocation): at H = 10,000 the whole shape is a few MiB.

use std::net::{Ipv4Addr, Ipv6Addr};

use metalbondd::wire::{Address, Destination, NextHop, Route, Vni};

/// First destination: route `g` is `10.0.0.0 + g` / 32.
const DEST_BASE: u32 = 0x0A00_0000;
/// Most routes the IPv4 destination scheme holds (10.0.0.0/8).
pub const MAX_ROUTES: u64 = 1 << 24;
/// Upper 12 bytes of every next hop; the session number fills the last 4.
const HOP_PREFIX: [u8; 12] = [0xfd, 0x00, 0xf1, 0xee, 0, 0, 0, 0, 0, 0, 0, 0];
/// Wire VNI of VNI index 0 (the most popular one); VNI 0 is avoided because
/// its SUBSCRIBE has an empty payload, which some servers mishandle.
pub const VNI_BASE: u32 = 1;

/// SplitMix64: a tiny, fast, well-mixed generator whose output never changes
/// with a dependency update, so a seed names the same fleet forever.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`, stream `stream` (independent streams for
    /// independent purposes).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Zipf-like popularity over `0..v`: weight of index k is `1 / (k+1)^s`.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `v` items with exponent `s` (0 = uniform).
    pub fn new(v: u32, s: f64) -> Self {
        let mut acc = 0.0;
        let cdf = (0..v)
            .map(|k| {
                acc += 1.0 / f64::from(k + 1).powf(s);
                acc
            })
            .collect();
        Self { cdf }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let total = *self.cdf.last().expect("at least one item");
        let x = rng.unit() * total;
        (self.cdf.partition_point(|&c| c <= x) as u32).min(self.cdf.len() as u32 - 1)
    }
}

/// Sizes of a fleet.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Sessions (hypervisors), H.
    pub sessions: u32,
    /// VNIs, V.
    pub vnis: u32,
    /// Subscriptions per session, S (distinct VNIs).
    pub subs: u32,
    /// Routes announced per session, R.
    pub routes: u32,
    /// Zipf exponent of the VNI popularity.
    pub zipf_s: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Dims {
    /// Checks the sizes; a message for the command line otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if self.sessions == 0 || self.vnis == 0 || self.routes == 0 {
            return Err("--hypervisors, --vnis and --routes-per-session must be at least 1".into());
        }
        if self.subs > self.vnis {
            return Err(format!(
                "--subs-per-session {} is more than --vnis {}: subscriptions are distinct VNIs",
                self.subs, self.vnis
            ));
        }
        if u64::from(self.sessions) * u64::from(self.routes) > MAX_ROUTES {
            return Err(format!(
                "--hypervisors x --routes-per-session must be at most {MAX_ROUTES} (routes are 10.0.0.0/8 /32s)"
            ));
        }
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return Err("--zipf-s must be a finite number >= 0".into());
        }
        Ok(())
    }
}

/// The fleet: who announces what where, who subscribes to what.
pub struct Shape {
    /// Sizes.
    pub dims: Dims,
    /// VNI index of route g.
    route_vni: Vec<u32>,
    /// Position of route g among the routes of its VNI.
    route_rank: Vec<u32>,
    /// Routes of VNI k: `vni_routes[vni_start[k]..vni_start[k+1]]`, ascending.
    vni_start: Vec<u32>,
    vni_routes: Vec<u32>,
    /// Subscribed VNI indexes of session h: `subs[h*S..(h+1)*S]`, ascending.
    subs: Vec<u32>,
    /// Sessions subscribed to VNI k, as (session, slot in its subscription list):
    /// `vni_subs[vni_sub_start[k]..vni_sub_start[k+1]]`.
    vni_sub_start: Vec<u32>,
    vni_subs: Vec<(u32, u32)>,
}

/// The first half of a counting sort of `keys` (each below `buckets`):
/// where each key's run starts in the sorted order, plus the total at the
/// end, so key k's run is `starts[k]..starts[k + 1]`.
fn bucket_starts(keys: &[u32], buckets: usize) -> Vec<u32> {
    let mut starts = vec![0u32; buckets + 1];
    for &k in keys {
        starts[k as usize + 1] += 1;
    }
    for k in 0..buckets {
        starts[k + 1] += starts[k];
    }
    starts
}

impl Shape {
    /// Builds the fleet for `dims` (validated).
    pub fn new(dims: Dims) -> Self {
        let h = dims.sessions as usize;
        let s = dims.subs as usize;
        let r = dims.routes as usize;
        let v = dims.vnis as usize;
        let zipf = Zipf::new(dims.vnis, dims.zipf_s);
        let mut subs = Vec::with_capacity(h * s);
        let mut route_vni = Vec::with_capacity(h * r);
        for sess in 0..h as u64 {
            let mut rng = Rng::new(dims.seed, sess);
            let first = subs.len();
            let mut tries = 0;
            while subs.len() - first < s {
                // Rejection keeps the draw Zipf-shaped; the uniform fallback
                // only bounds the loop for extreme exponents.
                let k = if tries < 64 * s {
                    zipf.sample(&mut rng)
                } else {
                    rng.below(dims.vnis.into()) as u32
                };
                tries += 1;
                if !subs[first..].contains(&k) {
                    subs.push(k);
                }
            }
            subs[first..].sort_unstable();
            for _ in 0..r {
                route_vni.push(zipf.sample(&mut rng));
            }
        }
        // Routes grouped by VNI (counting sort keeps them ascending).
        let vni_start = bucket_starts(&route_vni, v);
        let mut fill = vni_start.clone();
        let mut vni_routes = vec![0u32; route_vni.len()];
        let mut route_rank = vec![0u32; route_vni.len()];
        for (g, &k) in route_vni.iter().enumerate() {
            let at = fill[k as usize];
            vni_routes[at as usize] = g as u32;
            route_rank[g] = at - vni_start[k as usize];
            fill[k as usize] += 1;
        }
        let vni_sub_start = bucket_starts(&subs, v);
        let mut fill = vni_sub_start.clone();
        let mut vni_subs = vec![(0u32, 0u32); subs.len()];
        for (i, &k) in subs.iter().enumerate() {
            let at = &mut fill[k as usize];
            vni_subs[*at as usize] = ((i / s) as u32, (i % s) as u32);
            *at += 1;
        }
        Self {
            dims,
            route_vni,
            route_rank,
            vni_start,
            vni_routes,
            subs,
            vni_sub_start,
            vni_subs,
        }
    }

    /// Number of routes (H x R).
    pub fn n_routes(&self) -> u32 {
        self.route_vni.len() as u32
    }

    /// The session announcing route `g`.
    #[inline]
    pub fn owner(&self, g: u32) -> u32 {
        g / self.dims.routes
    }

    /// VNI index of route `g`.
    #[inline]
    pub fn vni_of(&self, g: u32) -> u32 {
        self.route_vni[g as usize]
    }

    /// Position of route `g` among its VNI's routes.
    #[inline]
    pub fn rank(&self, g: u32) -> u32 {
        self.route_rank[g as usize]
    }

    /// Routes in VNI index `k`, ascending.
    #[inline]
    pub fn routes_in(&self, k: u32) -> &[u32] {
        let k = k as usize;
        &self.vni_routes[self.vni_start[k] as usize..self.vni_start[k + 1] as usize]
    }

    /// VNI indexes session `h` subscribes to, ascending.
    #[inline]
    pub fn subs_of(&self, h: u32) -> &[u32] {
        let s = self.dims.subs as usize;
        &self.subs[h as usize * s..(h as usize + 1) * s]
    }

    /// (session, subscription slot) of every session subscribed to VNI index `k`.
    #[inline]
    pub fn subscribers(&self, k: u32) -> &[(u32, u32)] {
        let k = k as usize;
        &self.vni_subs[self.vni_sub_start[k] as usize..self.vni_sub_start[k + 1] as usize]
    }

    /// The wire VNI of VNI index `k`.
    #[inline]
    pub fn wire_vni(k: u32) -> u32 {
        VNI_BASE + k
    }

    /// The next hop of session `h`.
    pub fn hop(h: u32) -> NextHop {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&HOP_PREFIX);
        b[12..].copy_from_slice(&h.to_be_bytes());
        NextHop::standard(Address::from(Ipv6Addr::from(b)))
    }

    /// Route `g` as it goes on the wire.
    pub fn route(&self, g: u32) -> Route {
        Route {
            vni: Vni(Self::wire_vni(self.vni_of(g))),
            dest: Destination {
                addr: Address::from(Ipv4Addr::from(DEST_BASE + g)),
                prefix_len: 32,
            },
            next_hop: Self::hop(self.owner(g)),
        }
    }

    /// The index of a received route, if it is exactly one of the fleet's
    /// routes (destination, VNI and next hop all match).
    pub fn index(&self, r: &Route) -> Option<u32> {
        let b = r.dest.addr.as_bytes();
        if r.dest.prefix_len != 32 || b.len() != 4 {
            return None;
        }
        let g = u32::from_be_bytes(b.try_into().ok()?).wrapping_sub(DEST_BASE);
        if g >= self.n_routes()
            || r.vni.0 != Self::wire_vni(self.vni_of(g))
            || r.next_hop != Self::hop(self.owner(g))
        {
            return None;
        }
        Some(g)
    }

    /// Route deliveries needed for every session to hold every route of its
    /// subscribed VNIs except its own (all routes announced).
    pub fn full_deliveries(&self) -> u64 {
        (0..self.dims.sessions)
            .map(|h| {
                self.subs_of(h)
                    .iter()
                    .map(|&k| {
                        self.routes_in(k)
                            .iter()
                            .filter(|&&g| self.owner(g) != h)
                            .count() as u64
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(sessions: u32, vnis: u32, subs: u32, routes: u32) -> Dims {
        Dims {
            sessions,
            vnis,
            subs,
            routes,
            zipf_s: 1.0,
            seed: 7,
        }
    }

    #[test]
    fn shape_is_deterministic_and_consistent() {
        let a = Shape::new(dims(50, 20, 4, 6));
        let b = Shape::new(dims(50, 20, 4, 6));
        assert_eq!(a.subs, b.subs);
        assert_eq!(a.route_vni, b.route_vni);
        for h in 0..50 {
            let s = a.subs_of(h);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "distinct, sorted: {s:?}");
            for (slot, &k) in s.iter().enumerate() {
                assert!(a.subscribers(k).contains(&(h, slot as u32)));
            }
        }
        for g in 0..a.n_routes() {
            let k = a.vni_of(g);
            assert_eq!(a.routes_in(k)[a.rank(g) as usize], g);
            assert_eq!(a.index(&a.route(g)), Some(g));
        }
        let other = Shape::new(Dims { seed: 8, ..a.dims });
        assert_ne!(a.route_vni, other.route_vni, "the seed matters");
    }

    #[test]
    fn popularity_is_skewed() {
        let shape = Shape::new(dims(2000, 100, 3, 10));
        let first = shape.routes_in(0).len();
        let last = shape.routes_in(99).len();
        // Weight 1 against 1/100: the top VNI holds far more routes.
        assert!(first > 20 * last.max(1), "{first} vs {last}");
    }

    #[test]
    fn foreign_routes_are_not_ours() {
        let shape = Shape::new(dims(4, 3, 2, 3));
        let mut r = shape.route(5);
        r.vni = Vni(r.vni.0 + 1);
        assert_eq!(shape.index(&r), None, "other VNI");
        let mut r = shape.route(5);
        r.next_hop = Shape::hop(0);
        assert_eq!(shape.index(&r), None, "other next hop");
        let mut r = shape.route(0);
        r.dest.addr = Address::from(Ipv4Addr::from(DEST_BASE + 12));
        assert_eq!(shape.index(&r), None, "beyond the fleet");
    }

    #[test]
    fn bad_dims_are_refused() {
        assert!(dims(1, 3, 4, 1).validate().is_err());
        assert!(dims(0, 3, 1, 1).validate().is_err());
        assert!(dims(1 << 20, 3, 1, 20).validate().is_err());
        assert!(dims(10, 3, 3, 1).validate().is_ok());
    }
}
