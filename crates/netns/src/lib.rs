//! Network namespaces, veth links and owned child processes for the `hybridgw lab` command and the tests.
//!
//! Everything here builds isolated Linux network namespaces (see `ip-netns(8)`) that are deleted again
//! on drop, even when a test panics. Every address this crate configures is checked against the
//! address ranges the project may use (RFC 5737 documentation networks, the RFC 2544 benchmarking
//! network 198.18.0.0/15, 169.254.21.0/24 and 169.254.22.0/24 for tunnel and BGP links, see [`addr`]).
//!
//! ```no_run
//! use netns::{Netns, topology::Lab};
//! # fn main() -> netns::Result<()> {
//! let lab = Lab::builder().prefix("demo").plain_routes(true).build()?;
//! let out = lab.onprem_host.exec(["ping", "-c", "1", "-W", "2", "198.19.1.10"])?;
//! println!("{out}");
//! let ns = Netns::new("demo")?;
//! let sock = ns.udp_bind("127.0.0.1:0".parse().unwrap())?; // a socket that lives in `ns`
//! # drop(sock); Ok(()) }
//! ```

pub mod addr;
pub mod bird;
mod error;
pub mod link;
mod ns;
mod process;
pub mod topology;

pub use addr::{Ipv4Cidr, check_addr, check_cidr, is_allowed};
pub use bird::Bird;
pub use error::{Error, Result};
pub use link::{Netem, veth_pair};
pub use ns::{Netns, cleanup_stale, delete_named};
pub use process::Proc;
